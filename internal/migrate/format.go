package migrate

import (
	"fmt"
	"runtime"

	"github.com/vmsnap/vmsnap/internal/sentinel"
	"github.com/vmsnap/vmsnap/qmp"
)

// Format is the layout of a memory file. It is recorded with the snapshot
// (String) and given back to Load, so that every QEMU version reverts what
// it saved and a QEMU that cannot read a file says so before anything is
// stopped (CanLoad).
type Format string

const (
	// FormatStream is QEMU's sequential migration stream ("QEVM" header,
	// sections, end-of-stream mark, device description). Every QEMU reads
	// it. Save writes it through a descriptor passed with getfd ("fd:")
	// below QEMU 9.0, and through an fdset ("file:/dev/fdset/N") on QEMU
	// ≥ 9.0, whose "fd:" to a regular file is deprecated; the bytes are the
	// same.
	FormatStream Format = "stream"
	// FormatMappedRAM is QEMU ≥ 9.0's mapped-ram file: the same stream,
	// but each RAM page at a fixed offset (the file never grows past the
	// RAM size, however often a live pre-copy save rewrites a page),
	// written and read by multifd channels in parallel, with O_DIRECT
	// where the file system supports it. Only a QEMU with the mapped-ram
	// capability reads it. Background-snapshot cannot write it.
	FormatMappedRAM Format = "mapped-ram"
)

// String returns the label recorded with a snapshot.
func (f Format) String() string { return string(f) }

// ParseFormat returns the Format labelled s. The empty label is
// FormatStream: the format of every memory file written before formats
// were recorded. Any other unknown label is an error.
func ParseFormat(s string) (Format, error) {
	switch Format(s) {
	case "", FormatStream:
		return FormatStream, nil
	case FormatMappedRAM:
		return FormatMappedRAM, nil
	}
	return "", fmt.Errorf("unknown memory file format %q", s)
}

// Migration capabilities of the mapped-ram format.
const (
	capMappedRAM = "mapped-ram"
	capMultifd   = "multifd"
)

// hasMappedRAM reports whether QEMU (its migration capabilities caps) can
// write and read the mapped-ram format: mapped-ram and multifd (QEMU ≥ 9.0;
// probed, not assumed).
func hasMappedRAM(caps map[string]bool) bool {
	_, mr := caps[capMappedRAM]
	_, mf := caps[capMultifd]
	return mr && mf
}

// CanLoad reports whether Load can read a memory file of format into a
// QEMU with the features feat (those of the QEMU about to be replaced serve
// when the new one runs the same binary). A format that QEMU cannot read
// gives an error wrapping sentinel.ErrUnsupported; the engine calls it
// before it stops anything for a revert.
func CanLoad(feat *qmp.Features, format Format) error {
	f, err := ParseFormat(string(format))
	if err != nil {
		return fmt.Errorf("%w: %w", sentinel.ErrUnsupported, err)
	}
	if feat == nil {
		return fmt.Errorf("%w: QEMU's features are not known", sentinel.ErrUnsupported)
	}
	if f == FormatMappedRAM && (!hasMappedRAM(feat.MigrationCapabilities) || !feat.Has("add-fd") || !feat.Has("remove-fd")) {
		return fmt.Errorf("%w: the memory file has the %s format, which QEMU %s cannot read (it needs QEMU ≥ 9.0 with the mapped-ram and multifd migration capabilities)", sentinel.ErrUnsupported, f, feat.Version)
	}
	return nil
}

// CanSave reports whether Save can write format in mode on a QEMU with
// the features feat, with an error wrapping sentinel.ErrUnsupported when
// it cannot. The empty format is DefaultFormat's choice.
func CanSave(feat *qmp.Features, mode Mode, format Format) error {
	if format == "" {
		format = DefaultFormat(feat, mode)
	}
	if _, err := ParseFormat(string(format)); err != nil {
		return fmt.Errorf("%w: %w", sentinel.ErrUnsupported, err)
	}
	if format == FormatMappedRAM {
		if mode == Background {
			return fmt.Errorf("%w: QEMU cannot combine background-snapshot with mapped-ram", sentinel.ErrUnsupported)
		}
		return CanLoad(feat, format)
	}
	return nil
}

// DefaultFormat is the format Save writes when it is not told one. The
// rule, from BenchmarkMemoryPaths (1 GiB guest, 512 MiB of random data,
// guest stopped, 2 host CPUs, one run on QEMU 10.0.2): mapped-ram saved in
// 502 ms against 580 ms for the stream and restored in 874 ms against
// 3257 ms (multifd reads with O_DIRECT, against one thread parsing a
// stream), so:
//
//   - Background: FormatStream. QEMU cannot combine background-snapshot
//     with mapped-ram or multifd; the short pause wins, and it writes
//     each page once anyway.
//   - Stopped and Precopy on a QEMU that has mapped-ram (≥ 9.0):
//     FormatMappedRAM, no slower to save, faster to restore, and a
//     pre-copy save's file stays at most the RAM size however often the
//     guest dirties a page (a stream appends every rewrite). Its apparent
//     size is the RAM size; pages never written are holes.
//   - Below QEMU 9.0: FormatStream always.
func DefaultFormat(feat *qmp.Features, mode Mode) Format {
	if feat != nil && mode != Background && CanLoad(feat, FormatMappedRAM) == nil {
		return FormatMappedRAM
	}
	return FormatStream
}

// Multifd channel count bounds: channels are sized to the host's CPUs.
const (
	minMultifdChannels = 1
	maxMultifdChannels = 8
)

// multifdChannels is the number of multifd channels of a mapped-ram save
// or load: one per host CPU, 1 to 8.
func multifdChannels() int {
	return max(minMultifdChannels, min(runtime.NumCPU(), maxMultifdChannels))
}
