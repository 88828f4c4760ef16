package vmsnap

import "strings"

// ProblemKind says what kind of disagreement a Problem reports. Its values
// are stable strings, so a toolstack can store and compare them; a kind it
// does not know (added by a later version) should be shown with its Detail.
type ProblemKind string

// Kinds of problems List, Get and Current report on a snapshot.
const (
	// ProblemDiskDetached: a disk the snapshot was taken of is not
	// attached to the domain any more (matched by node, device and file).
	ProblemDiskDetached ProblemKind = "disk-detached"
	// ProblemDiskMissingSnapshot: the disk is attached but no longer holds
	// the internal snapshot the record says it holds (deleted behind
	// vmsnap's back, or the image was replaced).
	ProblemDiskMissingSnapshot ProblemKind = "disk-missing-snapshot"
	// ProblemBuried: the disk holds the internal snapshot in a backing
	// image, under an external snapshot's overlay; QEMU can neither load
	// nor delete it there until that overlay is merged.
	ProblemBuried ProblemKind = "buried-under-overlay"
	// ProblemPartialDelete: an unfinished delete removed the snapshot from
	// this disk; the others still hold it. Deleting it again finishes.
	ProblemPartialDelete ProblemKind = "partial-delete"
	// ProblemInProgress: an operation on the snapshot (create, delete,
	// revert, rename) is running now or was interrupted by a crash. List
	// does not wait for operations and does not settle what they left:
	// the next operation on the domain, or Domain.Reconcile, does.
	ProblemInProgress ProblemKind = "in-progress-or-interrupted"
	// ProblemParentMissing: the snapshot's parent has no record.
	ProblemParentMissing ProblemKind = "parent-missing"
	// ProblemParentUnreadable: the snapshot's parent has a record that
	// cannot be read (see Listing.Unreadable).
	ProblemParentUnreadable ProblemKind = "parent-unreadable"
	// ProblemFrozenInUse: the domain runs directly on an external
	// snapshot's frozen image, not on the layers above it (its manager
	// restarted it from a configuration that predates the snapshot): the
	// guest's writes change the snapshot, and the overlay holds writes
	// the running guest does not see. Delete refuses to merge it; keep
	// the manager's configuration in step with the disk chain.
	ProblemFrozenInUse ProblemKind = "frozen-image-in-use"
)

// String returns the kind's stable name.
func (k ProblemKind) String() string { return string(k) }

// Problem is one disagreement between a snapshot's record and QEMU (or the
// rest of the store), found when the snapshot was listed.
type Problem struct {
	// Kind says what is wrong.
	Kind ProblemKind
	// Disk is the disk concerned (its device, else its node name), ""
	// when the problem concerns the whole snapshot.
	Disk string
	// Detail explains the problem in words, for people.
	Detail string
}

// String returns the problem as one line: the disk, if any, and the
// detail.
func (p Problem) String() string {
	var b strings.Builder
	if p.Disk != "" {
		b.WriteString("disk ")
		b.WriteString(p.Disk)
		b.WriteString(": ")
	}
	if p.Detail != "" {
		b.WriteString(p.Detail)
	} else {
		b.WriteString(string(p.Kind))
	}
	return b.String()
}

// HasProblem reports whether the snapshot carries a problem of kind k.
func (s *DomainSnapshot) HasProblem(k ProblemKind) bool {
	for _, p := range s.Problems {
		if p.Kind == k {
			return true
		}
	}
	return false
}

func (s *DomainSnapshot) addProblem(k ProblemKind, disk, detail string) {
	s.Problems = append(s.Problems, Problem{Kind: k, Disk: disk, Detail: detail})
}
