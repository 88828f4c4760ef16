package merge

import (
	"fmt"
	"maps"
	"slices"

	"github.com/vmsnap/vmsnap/internal/sentinel"
)

// Action is what a disk's plan asks the executor to do.
type Action int

// Actions, one per disk of the snapshot.
const (
	// ActionDone: the disk is Removed; nothing is left to do.
	ActionDone Action = iota + 1
	// ActionNothing: the frozen image has no live child; only Garbage
	// (a dead own overlay) is removed and the disk marked Removed.
	ActionNothing
	// ActionMerge: Child is merged into Frozen by Method, then Rebase,
	// Repoint and Garbage are carried out and the disk marked Removed.
	// When Relink is not empty, those images are first rebased (qemu-img
	// rebase -u) back onto Child.
	ActionMerge
	// ActionFinish: an earlier run merged Child into Frozen; only
	// Rebase, Repoint and Garbage are left, then the disk is marked
	// Removed. Child is "" when the earlier run left no progress mark.
	ActionFinish
)

var actionNames = map[Action]string{ActionDone: "done", ActionNothing: "nothing", ActionMerge: "merge", ActionFinish: "finish"}

// String returns a short name of the action.
func (a Action) String() string {
	if s, ok := actionNames[a]; ok {
		return s
	}
	return fmt.Sprintf("Action(%d)", int(a))
}

// Method is how a child is merged into the frozen image.
type Method int

// Methods of merging.
const (
	// MethodNone: nothing is merged.
	MethodNone Method = iota
	// MethodActiveCommit: the child is QEMU's active layer: block-commit
	// without a top, completed with job-complete. QEMU then runs on the
	// frozen image.
	MethodActiveCommit
	// MethodIntermediateCommit: the child is lower in QEMU's chain:
	// block-commit with the child as top. QEMU rewrites the backing link
	// of the image above the child.
	MethodIntermediateCommit
	// MethodOfflineCommit: QEMU does not have the child open: qemu-img
	// commit -d of the child, then qemu-img rebase -u of every image in
	// Rebase onto the frozen image.
	MethodOfflineCommit
)

var methodNames = map[Method]string{MethodNone: "none", MethodActiveCommit: "active-commit", MethodIntermediateCommit: "intermediate-commit", MethodOfflineCommit: "offline-commit"}

// String returns a short name of the method.
func (m Method) String() string {
	if s, ok := methodNames[m]; ok {
		return s
	}
	return fmt.Sprintf("Method(%d)", int(m))
}

// Ref names one disk of one record.
type Ref struct {
	// Record is the snapshot's name.
	Record string
	// Disk indexes the record's Disks.
	Disk int
}

// DiskPlan is the plan for one external disk of the snapshot.
type DiskPlan struct {
	// Device names the disk.
	Device string
	// Index is the disk's index in the record's Disks.
	Index int
	// Action is what to do.
	Action Action
	// Frozen is the snapshot's frozen image on this disk.
	Frozen string
	// Child is the image merged into Frozen (ActionMerge, ActionFinish).
	Child string
	// Method is how (ActionMerge).
	Method Method
	// Relink are images an interrupted earlier run rebased or QEMU
	// relinked from Child onto Frozen while the merged data cannot be
	// trusted to be in Frozen: the executor rebases them back onto Child
	// (qemu-img rebase -u, no QEMU holds them) before merging again.
	Relink []string
	// Rebase are the images to rebase (qemu-img rebase -u) onto Frozen
	// after the merge: with MethodOfflineCommit all of Child's children,
	// with QEMU's methods those outside QEMU's chains (QEMU repoints its
	// own chain).
	Rebase []string
	// Repoint are the disks of other records whose frozen image is Child:
	// their File becomes Frozen.
	Repoint []Ref
	// Garbage are the files to remove once the disk's merge and
	// bookkeeping are done: the merged child, and the snapshot's own
	// overlay when a revert left it behind.
	Garbage []string
}

// Plan is the plan for deleting one external snapshot.
type Plan struct {
	// Snapshot is the snapshot to delete.
	Snapshot string
	// Disks has one entry per external disk of the record, in the
	// record's order.
	Disks []DiskPlan
	// RevertOverlays are the snapshot's revert overlays that exist and
	// that nothing will use once the disks are done: removed after all
	// disks, with the record.
	RevertOverlays []string
}

// PlanDelete plans the delete of snapshot in.Delete. It checks every external
// disk of its record before it returns a plan: when any disk is refused,
// it returns no plan and the refusals (a *Refusal, or several joined with
// errors.Join). A snapshot without a record is sentinel.ErrNotFound. With
// in.Resume each disk is classified first (Classify): a disk an earlier
// run merged gets ActionFinish, and one whose merge must be redone gets
// ActionMerge with Relink.
func PlanDelete(in Input) (*Plan, error) {
	p, err := newPlanner(in)
	if err != nil {
		return nil, err
	}
	var progress map[int]DiskProgress
	var errs []error
	if in.Resume {
		progress = map[int]DiskProgress{}
		ps, err := Classify(in)
		if err != nil {
			return nil, err
		}
		for _, dp := range ps {
			progress[dp.Index] = dp
			if dp.Progress != ProgressLinkRewritten {
				continue
			}
			// Plan as if the relink were done: the child is live
			// again, whether or not a record still names it.
			for _, y := range dp.Relinked {
				im := p.graph.Images[y]
				im.Backing = dp.Child
				p.graph.Images[y] = im
			}
			p.live[dp.Child] = true
		}
		p.retrace()
	}
	out := &Plan{Snapshot: in.Delete}
	for i, d := range p.s.Disks {
		if d.Kind != KindExternal {
			continue
		}
		dp := DiskPlan{Device: d.Device, Index: i, Frozen: d.File}
		var err error
		switch pr := progress[i]; {
		case d.Removed:
			dp.Action = ActionDone
		case pr.Progress == ProgressMerged:
			err = p.finish(&dp, d, pr.Child)
		default:
			err = p.disk(&dp, d, pr)
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		out.Disks = append(out.Disks, dp)
	}
	if len(errs) > 0 {
		return nil, joinRefusals(errs)
	}
	out.RevertOverlays = p.deadRevertOverlays(out)
	return out, nil
}

type planner struct {
	in     Input
	s      *Record
	graph  Graph
	chains []Chain
	// live: images in the chains, named by other records' disks that are
	// not Removed, and the snapshot's own frozen images.
	live map[string]bool
}

func newPlanner(in Input) (*planner, error) {
	p := &planner{in: in, graph: Graph{Images: maps.Clone(in.Graph.Images)}}
	if p.graph.Images == nil {
		p.graph.Images = map[string]Image{}
	}
	for i := range in.Records {
		if in.Records[i].Name == in.Delete {
			p.s = &in.Records[i]
		}
	}
	if p.s == nil {
		return nil, fmt.Errorf("%w: snapshot %q has no record", sentinel.ErrNotFound, in.Delete)
	}
	p.chains = in.Chains
	p.live = map[string]bool{}
	for _, c := range p.chains {
		for _, f := range c.images() {
			p.live[f] = true
		}
	}
	for _, r := range in.Records {
		for _, d := range r.Disks {
			if d.Removed {
				continue
			}
			if r.Name != in.Delete {
				p.live[d.File], p.live[d.Overlay] = true, true
			} else if d.Kind == KindExternal {
				p.live[d.File] = true
			}
		}
	}
	delete(p.live, "")
	return p, nil
}

// retrace recomputes a shut-off domain's chains from the graph after a
// planned relink: they are what the domain will start from. QEMU's chains
// are what QEMU has open and stay as reported.
func (p *planner) retrace() {
	if p.in.Online {
		return
	}
	p.chains = slices.Clone(p.chains)
	for i, c := range p.chains {
		nc := Chain{Device: c.Device, Top: c.Top}
		seen := map[string]bool{c.Top: true}
		for f := p.graph.Images[c.Top].Backing; f != "" && !seen[f]; f = p.graph.Images[f].Backing {
			nc.Backing = append(nc.Backing, f)
			seen[f] = true
		}
		p.chains[i] = nc
		for _, f := range nc.Backing {
			p.live[f] = true
		}
	}
}

// where returns the chains holding f and f's position in each (0: top).
func (p *planner) where(f string) (chains, pos []int) {
	for i, c := range p.chains {
		if j := slices.Index(c.images(), f); j >= 0 {
			chains, pos = append(chains, i), append(pos, j)
		}
	}
	return chains, pos
}

func (p *planner) inChain(f string) bool {
	c, _ := p.where(f)
	return len(c) > 0
}

func (p *planner) runsOn(f string) bool {
	for _, c := range p.chains {
		if c.Top == f {
			return true
		}
	}
	return false
}

func (p *planner) refuse(d Disk, r Reason, images []string, snaps []string) *Refusal {
	return &Refusal{Snapshot: p.in.Delete, Device: d.Device, Reason: r, Images: images, Snapshots: snaps}
}

// ownDead reports whether the snapshot's own overlay o exists and a
// revert left it behind: not live, nothing backed by it.
func (p *planner) ownDead(o string) bool {
	return p.graph.exists(o) && !p.live[o] && len(p.graph.children(o)) == 0
}

// frozenBy returns the other records whose disks (not Removed) have f as
// frozen image, except skip.
func (p *planner) frozenBy(f string, skip []string) []string {
	var out []string
	for _, r := range p.in.Records {
		if r.Name == p.in.Delete || slices.Contains(skip, r.Name) {
			continue
		}
		for _, d := range r.Disks {
			if !d.Removed && d.Kind == KindExternal && d.File == f {
				out = append(out, r.Name)
				break
			}
		}
	}
	return out
}

// repoint returns the disks of other records whose frozen image is c.
func (p *planner) repoint(c string) []Ref {
	var out []Ref
	for _, r := range p.in.Records {
		if r.Name == p.in.Delete {
			continue
		}
		for i, d := range r.Disks {
			if !d.Removed && d.File == c {
				out = append(out, Ref{Record: r.Name, Disk: i})
			}
		}
	}
	return out
}

// disk plans one disk that no earlier run merged (or whose merge must be
// redone, pr.Progress == ProgressLinkRewritten).
func (p *planner) disk(dp *DiskPlan, d Disk, pr DiskProgress) error {
	f, o := d.File, d.Overlay
	if !p.graph.exists(f) {
		return p.refuse(d, ReasonFrozenMissing, []string{f}, nil)
	}
	if p.runsOn(f) {
		return p.refuse(d, ReasonFrozenActive, []string{f, o}, nil)
	}
	dead := p.ownDead(o)
	if !dead && p.graph.exists(o) {
		p.live[o] = true
	}
	var kids []string
	for _, k := range p.graph.children(f) {
		if p.live[k] {
			kids = append(kids, k)
		}
	}
	if len(kids) > 1 {
		return p.refuse(d, ReasonBranches, append([]string{f}, kids...), nil)
	}
	if len(kids) == 0 {
		dp.Action = ActionNothing
		if dead {
			dp.Garbage = []string{o}
		}
		return nil
	}
	c := kids[0]
	if other := p.frozenBy(f, pr.Renamed); len(other) > 0 {
		return p.refuse(d, ReasonSharedFrozen, []string{f, c}, other)
	}
	if sn := p.graph.Images[c].Snapshots; len(sn) > 0 {
		return p.refuse(d, ReasonInternalSnapshots, []string{c}, slices.Clone(sn))
	}
	dp.Action, dp.Child, dp.Relink = ActionMerge, c, pr.Relinked
	grand := p.graph.children(c)
	chains, pos := p.where(c)
	switch {
	case !p.in.Online:
		for i := range chains {
			if pos[i] == 0 {
				return p.refuse(d, ReasonOfflineTop, []string{c}, nil)
			}
		}
		dp.Method, dp.Rebase = MethodOfflineCommit, grand
	case len(chains) == 0:
		for _, g := range grand {
			if p.inChain(g) {
				return p.refuse(d, ReasonNotOpen, []string{c, g}, nil)
			}
		}
		dp.Method, dp.Rebase = MethodOfflineCommit, grand
	case len(chains) > 1:
		return p.refuse(d, ReasonChainMismatch, []string{c, f}, nil)
	default:
		img := p.chains[chains[0]].images()
		if pos[0]+1 >= len(img) || img[pos[0]+1] != f {
			return p.refuse(d, ReasonChainMismatch, []string{c, f}, nil)
		}
		dp.Method = MethodIntermediateCommit
		if pos[0] == 0 {
			dp.Method = MethodActiveCommit
		}
		for _, g := range grand {
			if !p.inChain(g) {
				dp.Rebase = append(dp.Rebase, g)
			}
		}
	}
	dp.Repoint = p.repoint(c)
	dp.Garbage = []string{c}
	if dead {
		dp.Garbage = append(dp.Garbage, o)
	}
	return nil
}

// finish plans the bookkeeping of a disk an earlier run merged: c (""
// when unknown) is in Frozen.
func (p *planner) finish(dp *DiskPlan, d Disk, c string) error {
	dp.Action, dp.Child = ActionFinish, c
	if c != "" {
		if p.in.Online && p.inChain(c) {
			return p.refuse(d, ReasonChainMismatch, []string{c, d.File}, nil)
		}
		dp.Rebase = p.graph.children(c)
		dp.Repoint = p.repoint(c)
		if p.graph.exists(c) {
			dp.Garbage = append(dp.Garbage, c)
		}
	}
	if d.Overlay != c && p.ownDead(d.Overlay) {
		dp.Garbage = append(dp.Garbage, d.Overlay)
	}
	return nil
}

// deadRevertOverlays returns the snapshot's revert overlays that exist,
// that are not live, that the disk plans do not already remove and that
// no image backs onto except those the plans remove.
func (p *planner) deadRevertOverlays(pl *Plan) []string {
	gone := map[string]bool{}
	for _, dp := range pl.Disks {
		for _, g := range dp.Garbage {
			gone[g] = true
		}
	}
	var out []string
	for _, r := range p.s.RevertOverlays {
		if !p.graph.exists(r) || p.live[r] || gone[r] || slices.Contains(out, r) {
			continue
		}
		used := false
		for _, k := range p.graph.children(r) {
			used = used || !gone[k]
		}
		if !used {
			out = append(out, r)
		}
	}
	slices.Sort(out)
	return out
}
