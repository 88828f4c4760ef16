package migrate

import "fmt"

// Mode says how Save writes the guest's memory.
type Mode int

const (
	// Stopped writes the memory of a stopped guest. If the guest runs,
	// Save stops it first and resumes it at the end; atStop runs before the
	// migration starts. The guest is stopped for the whole save.
	Stopped Mode = iota
	// Precopy streams memory while the guest runs; QEMU stops the guest
	// when the migration converges and pauses before switching over;
	// atStop runs then (guest stopped, images active), then the migration
	// completes and the guest resumes. The file holds the memory as it was
	// at that pause.
	Precopy
	// Background uses the background-snapshot capability: the guest is
	// stopped, atStop runs, the migration starts and QEMU resumes the guest
	// as soon as it has write-protected its memory; the file holds the
	// memory as it was when the guest stopped.
	Background
)

// String returns the mode's label, the value recorded with a snapshot:
// "stopped", "pre-copy" or "background-snapshot". ParseMode reads it back.
func (m Mode) String() string {
	switch m {
	case Stopped:
		return "stopped"
	case Precopy:
		return "pre-copy"
	case Background:
		return "background-snapshot"
	}
	return fmt.Sprintf("Mode(%d)", int(m))
}

// ParseMode returns the Mode whose String is s. Any other value is an
// error: a label written by a newer version is reported, not guessed.
func ParseMode(s string) (Mode, error) {
	for _, m := range []Mode{Stopped, Precopy, Background} {
		if m.String() == s {
			return m, nil
		}
	}
	return 0, fmt.Errorf("unknown memory mode %q", s)
}

// live reports whether the mode lets the guest run while memory is
// written.
func (m Mode) live() bool { return m == Precopy || m == Background }
