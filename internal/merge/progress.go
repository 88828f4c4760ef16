package merge

import (
	"fmt"
	"slices"
)

// Progress is how far an interrupted delete got on one disk.
type Progress int

// Progress of one disk of a snapshot whose delete was interrupted.
const (
	// ProgressNotStarted: the graph shows nothing of a merge; the disk is
	// planned as in a fresh delete. (QEMU may still have a commit job of
	// the earlier run, running or ready: the executor looks at query-jobs
	// before it starts another.)
	ProgressNotStarted Progress = iota + 1
	// ProgressMerged: the child's data is in the frozen image; only the
	// bookkeeping (rebases outside QEMU, records, garbage, Removed) is
	// left.
	ProgressMerged
	// ProgressLinkRewritten: images were relinked from the child to the
	// frozen image, but nothing proves the frozen image holds the child's
	// data: they are put back onto the child and the merge is done again
	// (merging is idempotent: the child is unchanged, and writing its
	// data into the frozen image twice gives the same image).
	ProgressLinkRewritten
	// ProgressDone: the disk is Removed.
	ProgressDone
)

var progressNames = map[Progress]string{ProgressNotStarted: "not-started", ProgressMerged: "merged", ProgressLinkRewritten: "link-rewritten", ProgressDone: "done"}

// String returns a short name of the progress.
func (p Progress) String() string {
	if s, ok := progressNames[p]; ok {
		return s
	}
	return fmt.Sprintf("Progress(%d)", int(p))
}

// DiskProgress is the classification of one external disk of a snapshot
// whose delete was interrupted.
type DiskProgress struct {
	// Device names the disk.
	Device string
	// Index is the disk's index in the record's Disks.
	Index int
	// Progress is how far the earlier run got.
	Progress Progress
	// Child is the image the earlier run merged or was merging: the
	// disk's progress mark, or else inferred from the records (see
	// Classify); "" when unknown.
	Child string
	// Relinked are the live images now backed by the frozen image other
	// than Child: before the merge the frozen image had one live child,
	// so these were backed by Child and the merge relinked them.
	Relinked []string
	// Renamed are the other snapshots whose record already names the
	// frozen image instead of Child (the earlier run's bookkeeping began).
	Renamed []string
}

// Classify says, for each external disk of the snapshot in.Delete, how far
// an interrupted earlier delete of it got, from the graph as found now.
// PlanDelete uses it when in.Resume is set; reconcile and the executor may call
// it to report. With F the disk's frozen image and O its own overlay:
//
//  1. A Removed disk is ProgressDone.
//  2. The child C is the disk's progress mark (Disk.Merging). Without a
//     mark it is inferred: an image X, backed by F, that another record
//     names as frozen image while that record's overlay on the same disk
//     is backed by F instead of X (the merge relinked it). Two such images
//     are refused (ReasonChainMismatch). C that exists but is not backed
//     by F is refused (ReasonChainMismatch).
//  3. Renamed are the other records whose disk (not Removed) has F as
//     frozen image: before the merge only this snapshot froze F, so the
//     earlier run's bookkeeping repointed them. Relinked are the live
//     images other than C backed by F (see DiskProgress.Relinked).
//  4. The merge has progressed when Relinked or Renamed is not empty, the
//     domain runs directly on F (an active commit completed), or C no
//     longer exists (the earlier run removed it, which it does only after
//     the merge). Otherwise the disk is ProgressNotStarted.
//  5. A progressed disk is ProgressMerged when C no longer exists, or
//     in.SameQEMU (the QEMU that merged is still running, so its view of F
//     is complete), or C is unknown and Renamed is not empty (the earlier
//     run saw the merge succeed; without a mark there is nothing to
//     relink onto), or the domain runs directly on F after the Pivoting
//     mark (QEMU flushed F and switched onto it: the active commit
//     completed).
//  6. Otherwise the frozen image cannot be trusted to hold C's data (a
//     QEMU killed after rewriting the backing link may never have written
//     F's metadata), and C still holds it:
//     - the domain runs directly on F: refused (ReasonFrozenActive);
//     - QEMU runs on a relinked image: refused (ReasonRelinkOpen), since
//     the link must be put back while no QEMU holds it;
//     - else ProgressLinkRewritten, and C unknown with the domain running
//     on F is refused (ReasonFrozenActive).
//
// All refusals are returned together (errors.Join), with no
// classification.
func Classify(in Input) ([]DiskProgress, error) {
	p, err := newPlanner(in)
	if err != nil {
		return nil, err
	}
	var out []DiskProgress
	var errs []error
	for i, d := range p.s.Disks {
		if d.Kind != KindExternal {
			continue
		}
		dp, err := p.classify(i, d)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		out = append(out, dp)
	}
	if len(errs) > 0 {
		return nil, joinRefusals(errs)
	}
	return out, nil
}

func (p *planner) classify(i int, d Disk) (DiskProgress, error) {
	dp := DiskProgress{Device: d.Device, Index: i}
	if d.Removed {
		dp.Progress = ProgressDone
		return dp, nil
	}
	f := d.File
	c := d.Merging
	if c == "" {
		var cands []string
		for _, r := range p.in.Records {
			if r.Name == p.in.Delete {
				continue
			}
			for _, od := range r.Disks {
				x, y := od.File, od.Overlay
				if od.Removed || x == f || !p.graph.exists(x) || !p.graph.exists(y) {
					continue
				}
				if p.graph.Images[x].Backing == f && p.graph.Images[y].Backing == f && !slices.Contains(cands, x) {
					cands = append(cands, x)
				}
			}
		}
		if len(cands) > 1 {
			slices.Sort(cands)
			return dp, p.refuse(d, ReasonChainMismatch, []string{cands[0], f}, nil)
		}
		if len(cands) == 1 {
			c = cands[0]
		}
	}
	dp.Child = c
	cExists := c != "" && p.graph.exists(c)
	if cExists && p.graph.Images[c].Backing != f {
		return dp, p.refuse(d, ReasonChainMismatch, []string{c, f}, nil)
	}
	dp.Renamed = p.frozenBy(f, nil)
	if c != "" {
		for _, k := range p.graph.children(f) {
			if k != c && p.live[k] {
				dp.Relinked = append(dp.Relinked, k)
			}
		}
	}
	topF := p.runsOn(f)
	if len(dp.Relinked) == 0 && len(dp.Renamed) == 0 && !topF && (c == "" || cExists) {
		dp.Progress = ProgressNotStarted
		return dp, nil
	}
	switch {
	case c != "" && !cExists, p.in.SameQEMU, c == "" && len(dp.Renamed) > 0:
		dp.Progress = ProgressMerged
		return dp, nil
	case topF && d.Pivoting && c != "":
		// QEMU completed the active commit (it was asked to, and the
		// disk is on F, where only that completion puts it).
		dp.Progress = ProgressMerged
		return dp, nil
	case topF:
		images := []string{f}
		if c != "" {
			images = append(images, c)
		}
		return dp, p.refuse(d, ReasonFrozenActive, images, nil)
	}
	if p.in.Online {
		for _, y := range dp.Relinked {
			if p.inChain(y) {
				return dp, p.refuse(d, ReasonRelinkOpen, append([]string{c}, dp.Relinked...), nil)
			}
		}
	}
	dp.Progress = ProgressLinkRewritten
	return dp, nil
}
