// Package qemuimg reads and changes disk images with qemu-img, and parses
// QEMU's ImageInfo, the description of an image that both
// `qemu-img info --output=json` and QMP's query-block (in
// inserted.image) report.
//
// Info is the one parser of that schema in vmsnap: the engine reads a
// running domain's images from query-block and a shut-off domain's from
// qemu-img into the same type. Runner runs qemu-img itself, always with
// separate argv words (never a shell) and "--" before file names.
package qemuimg

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"time"
)

// Info describes one image as QEMU's ImageInfo does. Fields QEMU leaves
// out decode as their zero values; fields vmsnap does not interpret are
// kept raw (FormatSpecific).
type Info struct {
	// Filename is the image's file name as QEMU or qemu-img was given it:
	// a path, or for images QEMU assembled itself (the temporary overlay
	// of -snapshot, an image opened with options) a "json:{...}"
	// pseudo-filename. A pseudo-filename whose protocol layer is a plain
	// file is decoded to that file's path (see PlainFilename); Pseudo
	// keeps the name QEMU reported.
	Filename string `json:"filename"`
	// Pseudo is the "json:{...}" pseudo-filename QEMU reported when
	// Filename was decoded from one, else "".
	Pseudo string `json:"-"`
	// Format is the image format driver: "qcow2", "raw", ...
	Format string `json:"format"`
	// VirtualSize is the size the guest sees, in bytes.
	VirtualSize uint64 `json:"virtual-size"`
	// ActualSize is the space the file takes on the host, in bytes (0
	// when QEMU cannot tell).
	ActualSize uint64 `json:"actual-size,omitempty"`
	// ClusterSize is the format's cluster size (0 for raw).
	ClusterSize uint64 `json:"cluster-size,omitempty"`
	// Encrypted is true for an encrypted image.
	Encrypted bool `json:"encrypted,omitempty"`
	// DirtyFlag is true when the image was not closed cleanly (qcow2
	// with lazy refcounts, qed).
	DirtyFlag bool `json:"dirty-flag,omitempty"`
	// BackingFilename is the backing file as the image's header names it,
	// possibly relative to the image's directory.
	BackingFilename string `json:"backing-filename,omitempty"`
	// FullBackingFilename is the backing file as QEMU resolved it; it is
	// relative when the image was named by a relative path.
	FullBackingFilename string `json:"full-backing-filename,omitempty"`
	// BackingFilenameFormat is the backing file's format as the header
	// records it ("" when the header does not say).
	BackingFilenameFormat string `json:"backing-filename-format,omitempty"`
	// Snapshots are the image's internal snapshots, oldest first.
	Snapshots []Snapshot `json:"snapshots,omitempty"`
	// BackingImage is the backing image's Info: nested by query-block,
	// linked by ParseChain from qemu-img's --backing-chain array, nil
	// from plain `qemu-img info`.
	BackingImage *Info `json:"backing-image,omitempty"`
	// FormatSpecific is the format's own section (for qcow2: compat,
	// refcount bits, corrupt, ...), undecoded.
	FormatSpecific json.RawMessage `json:"format-specific,omitempty"`

	// Backing is the backing file resolved when the Info was decoded:
	// FullBackingFilename, else BackingFilename, else the nested
	// BackingImage's Filename; a relative path is joined to the directory
	// of Filename (so it is absolute when Filename is). A name with a
	// protocol prefix ("json:", "nbd:") is kept as it is. Empty for an
	// image without a backing file.
	Backing string `json:"-"`
}

// UnmarshalJSON decodes an ImageInfo object and resolves Backing.
func (i *Info) UnmarshalJSON(data []byte) error {
	type plain Info
	var p plain
	if err := json.Unmarshal(data, &p); err != nil {
		return err
	}
	*i = Info(p)
	if plain := PlainFilename(i.Filename); plain != i.Filename {
		i.Pseudo, i.Filename = i.Filename, plain
	}
	i.resolveBacking()
	return nil
}

// resolveBacking sets i.Backing from the fields QEMU reported.
func (i *Info) resolveBacking() {
	name := i.FullBackingFilename
	if name == "" {
		name = i.BackingFilename
	}
	if name == "" && i.BackingImage != nil {
		// query-block of a -snapshot overlay nests the backing image
		// without naming it in backing-filename.
		name = i.BackingImage.Filename
	}
	i.Backing = resolve(i.Filename, PlainFilename(name))
}

// resolve makes name, a backing file named in image, a path relative to
// the current directory as QEMU does: a relative name is relative to the
// directory of image; names with a protocol are left alone.
func resolve(image, name string) string {
	if name == "" || hasProtocol(name) {
		return name
	}
	if filepath.IsAbs(name) || image == "" || hasProtocol(image) {
		return filepath.Clean(name)
	}
	return filepath.Join(filepath.Dir(image), name)
}

// PlainFilename returns the path of the file under a "json:{...}"
// pseudo-filename that is no more than a format layer on a plain file
// ({"driver": FORMAT, "file": {"driver": "file", "filename": PATH}}, with
// an optional "backing"), as QEMU 5.2 names the top image after an
// external snapshot of a disk whose path holds a comma. Any other name,
// and any pseudo-filename with more options (a raw slice's offset and
// size, a protocol other than file, cache or locking options), is
// returned as it is: the path alone would not name what the node shows.
func PlainFilename(name string) string {
	js, ok := strings.CutPrefix(name, "json:")
	if !ok {
		return name
	}
	var top map[string]json.RawMessage
	if json.Unmarshal([]byte(js), &top) != nil {
		return name
	}
	var file map[string]string
	if json.Unmarshal(top["file"], &file) != nil || len(file) != 2 || file["driver"] != "file" || file["filename"] == "" {
		return name
	}
	var driver string
	if json.Unmarshal(top["driver"], &driver) != nil || driver == "" {
		return name
	}
	for k := range top {
		if k != "driver" && k != "file" && k != "backing" {
			return name
		}
	}
	return file["filename"]
}

// hasProtocol reports whether QEMU reads name as "protocol:rest": a colon
// before any slash ("json:{...}", "nbd:host:10809", "nbd+unix:///x").
func hasProtocol(name string) bool {
	colon := strings.IndexByte(name, ':')
	if colon < 0 {
		return false
	}
	slash := strings.IndexByte(name, '/')
	return slash < 0 || colon < slash
}

// Chain returns i and the images below it, top first.
func (i *Info) Chain() []*Info {
	var out []*Info
	for c := i; c != nil; c = c.BackingImage {
		out = append(out, c)
	}
	return out
}

// BackingFiles returns the file names of the images below i, nearest
// first, as far as the Info knows the chain (query-block and
// ParseChain nest it; plain qemu-img info gives only Backing).
func (i *Info) BackingFiles() []string {
	var out []string
	for c := i.BackingImage; c != nil; c = c.BackingImage {
		out = append(out, c.Filename)
	}
	if len(out) == 0 && i.Backing != "" {
		out = append(out, i.Backing)
	}
	return out
}

// Snapshot returns the internal snapshot named name, if the image holds
// one. QEMU matches snapshot-save, -load and -delete tags against names
// only, never IDs; so does this.
func (i *Info) Snapshot(name string) (Snapshot, bool) {
	for _, s := range i.Snapshots {
		if s.Name == name {
			return s, true
		}
	}
	return Snapshot{}, false
}

// Snapshot is one internal snapshot in an image (QAPI SnapshotInfo).
type Snapshot struct {
	// ID is the snapshot's ID within its image ("1", "2", ...); IDs of one
	// tag differ from image to image.
	ID string `json:"id"`
	// Name is the snapshot's tag.
	Name string `json:"name"`
	// VMStateSize is the size of the saved memory and device state in
	// this image; 0 for a disk-only snapshot and on the disks that do not
	// hold the state.
	VMStateSize uint64 `json:"vm-state-size"`
	// DateSec and DateNsec are when the snapshot was taken (see Date).
	DateSec  int64 `json:"date-sec"`
	DateNsec int64 `json:"date-nsec"`
	// VMClockSec and VMClockNsec are the guest's clock at the snapshot
	// (see VMClock).
	VMClockSec  int64 `json:"vm-clock-sec"`
	VMClockNsec int64 `json:"vm-clock-nsec"`
	// ICount is the guest's instruction count at the snapshot, nil when
	// QEMU did not report one.
	ICount *int64 `json:"icount,omitempty"`
}

// Date returns when the snapshot was taken.
func (s Snapshot) Date() time.Time { return time.Unix(s.DateSec, s.DateNsec) }

// VMClock returns the guest's clock when the snapshot was taken.
func (s Snapshot) VMClock() time.Duration {
	return time.Duration(s.VMClockSec)*time.Second + time.Duration(s.VMClockNsec)
}

// Parse decodes one ImageInfo object, the output of
// `qemu-img info --output=json`.
func Parse(data []byte) (*Info, error) {
	var i Info
	if err := json.Unmarshal(data, &i); err != nil {
		return nil, fmt.Errorf("qemuimg: parse image info: %w", err)
	}
	return &i, nil
}

// ParseChain decodes the JSON array that
// `qemu-img info --output=json --backing-chain` prints, top image first,
// and links each image's BackingImage to the next, so the result has the
// shape query-block reports. It fails on an empty array.
func ParseChain(data []byte) ([]*Info, error) {
	var chain []*Info
	if err := json.Unmarshal(data, &chain); err != nil {
		return nil, fmt.Errorf("qemuimg: parse image chain: %w", err)
	}
	if len(chain) == 0 {
		return nil, fmt.Errorf("qemuimg: parse image chain: no image")
	}
	for k, img := range chain {
		if img == nil {
			return nil, fmt.Errorf("qemuimg: parse image chain: image %d is null", k)
		}
		if k+1 < len(chain) && img.BackingImage == nil {
			img.BackingImage = chain[k+1]
		}
		if img.Backing == "" {
			img.resolveBacking()
		}
	}
	return chain, nil
}

// Check is the result of `qemu-img check --output=json` (QAPI
// ImageCheck).
type Check struct {
	// Filename and Format name the image checked.
	Filename string `json:"filename"`
	Format   string `json:"format"`
	// CheckErrors counts errors that kept the check from completing.
	CheckErrors int `json:"check-errors"`
	// Corruptions counts corrupted metadata; the image is unsafe to use.
	Corruptions int `json:"corruptions,omitempty"`
	// Leaks counts leaked clusters: wasted space, harmless otherwise.
	Leaks int `json:"leaks,omitempty"`
	// CorruptionsFixed and LeaksFixed count what a repair (Runner.Repair)
	// fixed; Corruptions and Leaks then count what is left.
	CorruptionsFixed int `json:"corruptions-fixed,omitempty"`
	LeaksFixed       int `json:"leaks-fixed,omitempty"`
	// ImageEndOffset is where the image's data ends, in bytes.
	ImageEndOffset uint64 `json:"image-end-offset,omitempty"`
	// TotalClusters and AllocatedClusters describe the image's fill.
	TotalClusters     uint64 `json:"total-clusters,omitempty"`
	AllocatedClusters uint64 `json:"allocated-clusters,omitempty"`
}

// Clean reports whether the check found nothing wrong, leaks included.
func (c *Check) Clean() bool { return c.CheckErrors == 0 && c.Corruptions == 0 && c.Leaks == 0 }

// Repaired reports whether a repair fixed anything.
func (c *Check) Repaired() bool { return c.CorruptionsFixed > 0 || c.LeaksFixed > 0 }
