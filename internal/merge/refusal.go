package merge

import (
	"errors"
	"fmt"
	"strings"

	"github.com/vmsnap/vmsnap/internal/sentinel"
)

// Reason says why a disk of the snapshot cannot be merged.
type Reason int

// Reasons for a refusal. Each wraps the sentinel its doc names.
const (
	// ReasonBranches: the frozen image backs two or more live images
	// (branches made by reverts); merging one into it would change what
	// the others see. Images: the frozen image, then its live children.
	// Wraps ErrUnsupported.
	ReasonBranches Reason = iota + 1
	// ReasonSharedFrozen: the frozen image is also another snapshot's
	// frozen image (Snapshots). Images: the frozen image and the child.
	// Wraps ErrInconsistent.
	ReasonSharedFrozen
	// ReasonInternalSnapshots: the child holds internal snapshots
	// (Snapshots) that a merge would destroy. Images: the child. Wraps
	// ErrUnsupported.
	ReasonInternalSnapshots
	// ReasonNotOpen: QEMU does not have the child open, but an image the
	// child backs is in QEMU's chain: the graph and QEMU disagree.
	// Images: the child and that image. Wraps ErrInconsistent.
	ReasonNotOpen
	// ReasonChainMismatch: the child is in QEMU's chain but not right
	// above the frozen image, or in more than one chain, or an earlier
	// run's child is no longer backed by the frozen image. Images: the
	// child and the frozen image. Wraps ErrInconsistent.
	ReasonChainMismatch
	// ReasonFrozenActive: the domain runs directly on the frozen image
	// (it was started on it without the overlay, or a QEMU that died
	// after an active commit was restarted on it), so what the merge
	// would put in it is in doubt. Images: the frozen image, then the
	// child when known, else the snapshot's overlay. Wraps
	// ErrInconsistent.
	ReasonFrozenActive
	// ReasonOfflineTop: the domain is shut off and the child is the top
	// image it starts from; merging it away would change the domain's
	// configuration. Images: the child. Wraps ErrUnsupported.
	ReasonOfflineTop
	// ReasonFrozenMissing: the frozen image does not exist. Images: the
	// frozen image. Wraps ErrInconsistent.
	ReasonFrozenMissing
	// ReasonRelinkOpen: an earlier run's merge rewrote the backing link
	// of images QEMU runs on, but the frozen image cannot be trusted to
	// hold the merged data (another QEMU ran the merge); the link must be
	// put back while no QEMU holds the images. Images: the child, then
	// the images to relink onto it. Wraps ErrInconsistent.
	ReasonRelinkOpen
)

var reasonNames = map[Reason]string{
	ReasonBranches:          "branches",
	ReasonSharedFrozen:      "shared-frozen",
	ReasonInternalSnapshots: "internal-snapshots",
	ReasonNotOpen:           "not-open",
	ReasonChainMismatch:     "chain-mismatch",
	ReasonFrozenActive:      "frozen-active",
	ReasonOfflineTop:        "offline-top",
	ReasonFrozenMissing:     "frozen-missing",
	ReasonRelinkOpen:        "relink-open",
}

// String returns a short name of the reason.
func (r Reason) String() string {
	if s, ok := reasonNames[r]; ok {
		return s
	}
	return fmt.Sprintf("Reason(%d)", int(r))
}

// sentinel returns the sentinel error the reason wraps.
func (r Reason) sentinel() error {
	switch r {
	case ReasonBranches, ReasonInternalSnapshots, ReasonOfflineTop:
		return sentinel.ErrUnsupported
	}
	return sentinel.ErrInconsistent
}

// Refusal is why a disk of the snapshot cannot be merged. It wraps
// sentinel.ErrUnsupported or sentinel.ErrInconsistent (see Reason).
type Refusal struct {
	// Snapshot is the snapshot to delete.
	Snapshot string
	// Device is the disk refused.
	Device string
	// Reason says why.
	Reason Reason
	// Images are the images concerned, as Reason describes.
	Images []string
	// Snapshots are the other snapshots concerned (ReasonSharedFrozen)
	// or the child's internal snapshots (ReasonInternalSnapshots).
	Snapshots []string
}

// Error says what is refused, why, and what the caller can do.
func (e *Refusal) Error() string {
	im := func(i int) string {
		if i < len(e.Images) {
			return e.Images[i]
		}
		return "?"
	}
	var why string
	switch e.Reason {
	case ReasonBranches:
		why = fmt.Sprintf("image %s backs %v (branches made by reverts); merging one into it would change what the others see — delete the snapshots of the other branches first, or drop only the record", im(0), e.Images[1:])
	case ReasonSharedFrozen:
		why = fmt.Sprintf("image %s is also the frozen image of snapshot %v; merging %s into it would change that snapshot", im(0), e.Snapshots, im(1))
	case ReasonInternalSnapshots:
		why = fmt.Sprintf("overlay %s holds internal snapshots %v that a merge would destroy; delete them first", im(0), e.Snapshots)
	case ReasonNotOpen:
		why = fmt.Sprintf("%s is backed by %s but QEMU does not have that open", im(1), im(0))
	case ReasonChainMismatch:
		why = fmt.Sprintf("the backing chain does not have %s right above %s as the snapshot's records say", im(0), im(1))
	case ReasonFrozenActive:
		why = fmt.Sprintf("the domain runs directly on the frozen image %s, not on the layers above it (%s): what it wrote since and what those layers hold are no longer in one chain; nothing is merged or removed — decide which image to keep, then drop only the record", im(0), strings.Join(e.Images[min(1, len(e.Images)):], ", "))
	case ReasonOfflineTop:
		why = fmt.Sprintf("the shut-off domain starts from %s; merging it away would change the domain's configuration — delete while the domain runs", im(0))
	case ReasonFrozenMissing:
		why = fmt.Sprintf("the frozen image %s does not exist", im(0))
	case ReasonRelinkOpen:
		why = fmt.Sprintf("an interrupted merge rewrote the backing link of %v from %s to the frozen image, which may lack %s's data; shut the domain off and run the delete again (or qemu-img rebase -u -b %s each of them)", e.Images[min(1, len(e.Images)):], im(0), im(0), im(0))
	default:
		why = e.Reason.String()
	}
	return fmt.Sprintf("delete snapshot %q, disk %s: %v: %s", e.Snapshot, e.Device, e.Reason.sentinel(), why)
}

// Unwrap returns sentinel.ErrUnsupported or sentinel.ErrInconsistent.
func (e *Refusal) Unwrap() error { return e.Reason.sentinel() }

// joinRefusals returns the one error, or all of them joined.
func joinRefusals(errs []error) error {
	if len(errs) == 1 {
		return errs[0]
	}
	return errors.Join(errs...)
}
