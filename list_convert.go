package vmsnap

import (
	"fmt"
	"runtime"
	"sync"

	"github.com/vmsnap/vmsnap/store"
)

// listView is what List checks every record against.
type listView struct {
	current    string
	disks      []Disk // QEMU's view, when qemuOK
	qemuOK     bool
	tree       *store.Tree // the records' tree, once built
	unreadable map[string]bool
	flags      ListFlags
}

// listChunk is the number of records below which listSnapshots converts
// them on one goroutine: under it, starting others costs more than it
// saves.
const listChunk = 512

// listSnapshots converts the records to snapshots, checked against v, and
// returns those that pass v's flags, in the records' order (nil when none
// does), and the records' tree, which it builds (v.tree is not used).
// Records are independent of each other, so large listings are converted
// by one goroutine per CPU, each on its own run of them, while the tree is
// built; the checks that need the tree follow.
func listSnapshots(recs []*store.Record, v listView) ([]*DomainSnapshot, *store.Tree) {
	if len(recs) == 0 {
		return nil, store.BuildTree(recs)
	}
	snaps := make([]*DomainSnapshot, len(recs))
	workers := min(runtime.GOMAXPROCS(0), (len(recs)+listChunk-1)/listChunk)
	if workers <= 1 {
		v.tree = store.BuildTree(recs)
		v.convert(recs, snaps)
		v.place(snaps)
	} else {
		var wg sync.WaitGroup
		built := make(chan struct{})
		per := (len(recs) + workers - 1) / workers
		for lo := 0; lo < len(recs); lo += per {
			hi := min(lo+per, len(recs))
			wg.Add(1)
			go func() {
				defer wg.Done()
				v.convert(recs[lo:hi], snaps[lo:hi])
				<-built
				v.place(snaps[lo:hi])
			}()
		}
		v.tree = store.BuildTree(recs) // before close: the workers read it after
		close(built)
		wg.Wait()
	}
	if v.flags == 0 {
		return snaps, v.tree // keep keeps every snapshot
	}
	var out []*DomainSnapshot
	for _, s := range snaps {
		if s != nil {
			out = append(out, s)
		}
	}
	return out, v.tree
}

// convert sets snaps[i] to the snapshot of recs[i], checked against
// QEMU's view of the disks.
func (v *listView) convert(recs []*store.Record, snaps []*DomainSnapshot) {
	// One allocation for the snapshots and one for their disks.
	all := make([]DomainSnapshot, len(recs))
	n := 0
	for _, r := range recs {
		n += len(r.Disks)
	}
	slab := make([]DiskSnapshot, 0, n)
	for i, r := range recs {
		s := &all[i]
		fillFromRecord(s, r, &slab)
		s.Current = s.Name == v.current
		if v.qemuOK && !s.HasProblem(ProblemInProgress) {
			checkAgainstQEMU(s, v.disks)
		}
		snaps[i] = s
	}
}

// place checks the parent of each snapshot against the tree and sets
// those that the flags leave out to nil.
func (v *listView) place(snaps []*DomainSnapshot) {
	for i, s := range snaps {
		if s.Parent != "" && v.tree.Record(s.Parent) == nil {
			if v.unreadable[s.Parent] {
				s.addProblem(ProblemParentUnreadable, "", fmt.Sprintf("the record of parent %q cannot be read", s.Parent))
			} else {
				s.addProblem(ProblemParentMissing, "", fmt.Sprintf("parent %q has no record", s.Parent))
			}
		}
		if !keep(s, v.flags, v.tree) {
			snaps[i] = nil
		}
	}
}
