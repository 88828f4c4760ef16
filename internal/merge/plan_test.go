package merge

import (
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/vmsnap/vmsnap/internal/sentinel"
)

// Images of one disk "vda": base, then the overlays of external snapshots
// e1, e2, e3 (o1 over base, o2 over o1, o3 over o2), revert overlays r1,
// r2, a second disk "vdb" (bbase, b1), and x for odd cases.
const (
	base  = "/v/base.qcow2"
	o1    = "/v/base.e1.qcow2"
	o2    = "/v/base.e1.e2.qcow2"
	o3    = "/v/base.e1.e2.e3.qcow2"
	r1    = "/v/base.r1-e1.qcow2"
	r2    = "/v/base.r2-e1.qcow2"
	bbase = "/v/data.qcow2"
	b1    = "/v/data.e1.qcow2"
	x     = "/v/x.qcow2"
)

// graph builds a Graph from image, backing pairs.
func graph(pairs ...string) Graph {
	g := Graph{Images: map[string]Image{}}
	for i := 0; i < len(pairs); i += 2 {
		g.Images[pairs[i]] = Image{Backing: pairs[i+1]}
	}
	return g
}

// with returns g with image f holding internal snapshots.
func (g Graph) with(f string, snaps ...string) Graph {
	im := g.Images[f]
	im.Snapshots = snaps
	g.Images[f] = im
	return g
}

func chain(dev string, images ...string) Chain {
	return Chain{Device: dev, Top: images[0], Backing: images[1:]}
}

func ext(dev, file, overlay string) Disk {
	return Disk{Device: dev, Kind: KindExternal, File: file, Overlay: overlay}
}

func rec(name string, disks ...Disk) Record { return Record{Name: name, Disks: disks} }

func removed(d Disk) Disk        { d.Removed = true; return d }
func mark(d Disk, c string) Disk { d.Merging = c; return d }

func (r Record) reverts(f ...string) Record { r.RevertOverlays = f; return r }

// The chain e1 <- e2 <- e3 on vda.
var (
	linearGraph = graph(base, "", o1, base, o2, o1, o3, o2)
	linearRecs  = []Record{
		rec("e1", ext("vda", base, o1)),
		rec("e2", ext("vda", o1, o2)),
		rec("e3", ext("vda", o2, o3)),
	}
	linearChain = chain("vda", o3, o2, o1, base)
)

// refused describes an expected refusal.
type refused struct {
	Device string
	Reason Reason
	Images []string
}

func refusals(t *testing.T, err error) []refused {
	t.Helper()
	var errs []error
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		errs = j.Unwrap()
	} else {
		errs = []error{err}
	}
	var out []refused
	for _, e := range errs {
		var r *Refusal
		if !errors.As(e, &r) {
			t.Fatalf("%v is not a *Refusal", e)
		}
		if !errors.Is(e, r.Reason.sentinel()) {
			t.Errorf("%v does not wrap %v", e, r.Reason.sentinel())
		}
		out = append(out, refused{r.Device, r.Reason, r.Images})
	}
	return out
}

func TestPlanDelete(t *testing.T) {
	tests := []struct {
		name    string
		in      Input
		want    *Plan
		refused []refused
	}{
		{
			name: "linear online: delete the root",
			in:   Input{Graph: linearGraph, Online: true, Chains: []Chain{linearChain}, Records: linearRecs, Delete: "e1"},
			want: &Plan{Snapshot: "e1", Disks: []DiskPlan{{
				Device: "vda", Action: ActionMerge, Frozen: base, Child: o1, Method: MethodIntermediateCommit,
				Repoint: []Ref{{"e2", 0}}, Garbage: []string{o1},
			}}},
		},
		{
			name: "linear online: delete the middle of three",
			in:   Input{Graph: linearGraph, Online: true, Chains: []Chain{linearChain}, Records: linearRecs, Delete: "e2"},
			want: &Plan{Snapshot: "e2", Disks: []DiskPlan{{
				Device: "vda", Action: ActionMerge, Frozen: o1, Child: o2, Method: MethodIntermediateCommit,
				Repoint: []Ref{{"e3", 0}}, Garbage: []string{o2},
			}}},
		},
		{
			name: "linear online: delete the leaf",
			in:   Input{Graph: linearGraph, Online: true, Chains: []Chain{linearChain}, Records: linearRecs, Delete: "e3"},
			want: &Plan{Snapshot: "e3", Disks: []DiskPlan{{
				Device: "vda", Action: ActionMerge, Frozen: o2, Child: o3, Method: MethodActiveCommit,
				Garbage: []string{o3},
			}}},
		},
		{
			name: "linear offline: delete the root merges with qemu-img and rebases the next image",
			in:   Input{Graph: linearGraph, Chains: []Chain{linearChain}, Records: linearRecs, Delete: "e1"},
			want: &Plan{Snapshot: "e1", Disks: []DiskPlan{{
				Device: "vda", Action: ActionMerge, Frozen: base, Child: o1, Method: MethodOfflineCommit,
				Rebase: []string{o2}, Repoint: []Ref{{"e2", 0}}, Garbage: []string{o1},
			}}},
		},
		{
			name:    "linear offline: the leaf's child is the image the domain starts from",
			in:      Input{Graph: linearGraph, Chains: []Chain{linearChain}, Records: linearRecs, Delete: "e3"},
			refused: []refused{{"vda", ReasonOfflineTop, []string{o3}}},
		},
		{
			// e1 <- e2, reverted to e1 (r1 over base), then e3 on r1.
			name: "branches made by a revert",
			in: Input{
				Graph: graph(base, "", o1, base, o2, o1, r1, base, o3, r1), Online: true,
				Chains:  []Chain{chain("vda", o3, r1, base)},
				Records: []Record{rec("e1", ext("vda", base, o1)).reverts(r1), rec("e2", ext("vda", o1, o2)), rec("e3", ext("vda", r1, o3))},
				Delete:  "e1",
			},
			refused: []refused{{"vda", ReasonBranches, []string{base, o1, r1}}},
		},
		{
			name: "a branch's leaf: its own overlay was left behind by the revert",
			in: Input{
				Graph: graph(base, "", o1, base, o2, o1, r1, base, o3, r1), Online: true,
				Chains:  []Chain{chain("vda", o3, r1, base)},
				Records: []Record{rec("e1", ext("vda", base, o1)).reverts(r1), rec("e2", ext("vda", o1, o2)), rec("e3", ext("vda", r1, o3))},
				Delete:  "e2",
			},
			want: &Plan{Snapshot: "e2", Disks: []DiskPlan{{Device: "vda", Action: ActionNothing, Frozen: o1, Garbage: []string{o2}}}},
		},
		{
			name: "the branch root once the other branch is gone: merge the revert overlay, drop the dead own overlay",
			in: Input{
				Graph: graph(base, "", o1, base, r1, base, o3, r1), Online: true,
				Chains:  []Chain{chain("vda", o3, r1, base)},
				Records: []Record{rec("e1", ext("vda", base, o1)).reverts(r1), rec("e3", ext("vda", r1, o3))},
				Delete:  "e1",
			},
			want: &Plan{Snapshot: "e1", Disks: []DiskPlan{{
				Device: "vda", Action: ActionMerge, Frozen: base, Child: r1, Method: MethodIntermediateCommit,
				Repoint: []Ref{{"e3", 0}}, Garbage: []string{r1, o1},
			}}},
		},
		{
			name: "revert leftovers: the running revert overlay is merged, an earlier one left behind goes with the snapshot",
			in: Input{
				Graph: graph(base, "", o1, base, r1, base, r2, base), Online: true,
				Chains:  []Chain{chain("vda", r2, base)},
				Records: []Record{rec("e1", ext("vda", base, o1)).reverts(r1, r2)},
				Delete:  "e1",
			},
			want: &Plan{
				Snapshot: "e1",
				Disks: []DiskPlan{{
					Device: "vda", Action: ActionMerge, Frozen: base, Child: r2, Method: MethodActiveCommit,
					Garbage: []string{r2, o1},
				}},
				RevertOverlays: []string{r1},
			},
		},
		{
			name: "a revert overlay another snapshot froze is kept",
			in: Input{
				Graph: graph(base, "", o1, base, r1, base, x, r1, r2, base), Online: true,
				Chains:  []Chain{chain("vda", r2, base)},
				Records: []Record{rec("e1", ext("vda", base, o1)).reverts(r1, r2), rec("e4", ext("vda", r1, x))},
				Delete:  "e1",
			},
			refused: []refused{{"vda", ReasonBranches, []string{base, r1, r2}}},
		},
		{
			// e1 <- e2 <- e3, reverted to e2 (r2 over o1): o2 (e3's frozen
			// image) is outside QEMU's chain and is rebased onto base.
			name: "a child of the merged image outside QEMU's chain is rebased",
			in: Input{
				Graph: graph(base, "", o1, base, o2, o1, o3, o2, r2, o1), Online: true,
				Chains:  []Chain{chain("vda", r2, o1, base)},
				Records: []Record{rec("e1", ext("vda", base, o1)), rec("e2", ext("vda", o1, o2)).reverts(r2), rec("e3", ext("vda", o2, o3))},
				Delete:  "e1",
			},
			want: &Plan{Snapshot: "e1", Disks: []DiskPlan{{
				Device: "vda", Action: ActionMerge, Frozen: base, Child: o1, Method: MethodIntermediateCommit,
				Rebase: []string{o2}, Repoint: []Ref{{"e2", 0}}, Garbage: []string{o1},
			}}},
		},
		{
			// e1 <- e2 <- e3, reverted to e1 (r1 over base): deleting e2
			// merges o2 into o1 with qemu-img while QEMU runs elsewhere.
			name: "online, the child is not in QEMU's chain: qemu-img merge",
			in: Input{
				Graph: graph(base, "", o1, base, o2, o1, o3, o2, r1, base), Online: true,
				Chains:  []Chain{chain("vda", r1, base)},
				Records: []Record{rec("e1", ext("vda", base, o1)).reverts(r1), rec("e2", ext("vda", o1, o2)), rec("e3", ext("vda", o2, o3))},
				Delete:  "e2",
			},
			want: &Plan{Snapshot: "e2", Disks: []DiskPlan{{
				Device: "vda", Action: ActionMerge, Frozen: o1, Child: o2, Method: MethodOfflineCommit,
				Rebase: []string{o3}, Repoint: []Ref{{"e3", 0}}, Garbage: []string{o2},
			}}},
		},
		{
			name:    "the frozen image is also another snapshot's",
			in:      Input{Graph: graph(base, "", o1, base), Online: true, Chains: []Chain{chain("vda", o1, base)}, Records: []Record{rec("e1", ext("vda", base, o1)), rec("e9", ext("vda", base, o1))}, Delete: "e1"},
			refused: []refused{{"vda", ReasonSharedFrozen, []string{base, o1}}},
		},
		{
			name:    "the child holds internal snapshots",
			in:      Input{Graph: graph(base, "", o1, base, o2, o1, o3, o2).with(o1, "int1"), Online: true, Chains: []Chain{linearChain}, Records: linearRecs, Delete: "e1"},
			refused: []refused{{"vda", ReasonInternalSnapshots, []string{o1}}},
		},
		{
			name:    "QEMU does not have the child open but runs on an image it backs",
			in:      Input{Graph: graph(base, "", o1, base, o2, o1), Online: true, Chains: []Chain{chain("vda", o2, base)}, Records: []Record{rec("e1", ext("vda", base, o1)), rec("e2", ext("vda", o1, o2))}, Delete: "e1"},
			refused: []refused{{"vda", ReasonNotOpen, []string{o1, o2}}},
		},
		{
			name:    "the child is in QEMU's chain but not right above the frozen image",
			in:      Input{Graph: graph(base, "", o1, base), Online: true, Chains: []Chain{chain("vda", o1, x, base)}, Records: []Record{rec("e1", ext("vda", base, o1))}, Delete: "e1"},
			refused: []refused{{"vda", ReasonChainMismatch, []string{o1, base}}},
		},
		{
			name:    "QEMU runs directly on the frozen image (restarted without the overlay)",
			in:      Input{Graph: graph(base, "", o1, base), Online: true, Chains: []Chain{chain("vda", base)}, Records: []Record{rec("e1", ext("vda", base, o1))}, Delete: "e1"},
			refused: []refused{{"vda", ReasonFrozenActive, []string{base, o1}}},
		},
		{
			name:    "the frozen image is missing",
			in:      Input{Graph: graph(o1, base), Online: true, Chains: []Chain{chain("vda", o1, base)}, Records: []Record{rec("e1", ext("vda", base, o1))}, Delete: "e1"},
			refused: []refused{{"vda", ReasonFrozenMissing, []string{base}}},
		},
		{
			name: "a partly deleted snapshot: the Removed disk is done, the other merged",
			in: Input{
				Graph: graph(base, "", bbase, "", b1, bbase), Online: true,
				Chains:  []Chain{chain("vda", base), chain("vdb", b1, bbase)},
				Records: []Record{rec("e1", removed(ext("vda", base, o1)), ext("vdb", bbase, b1))},
				Delete:  "e1",
			},
			want: &Plan{Snapshot: "e1", Disks: []DiskPlan{
				{Device: "vda", Action: ActionDone, Frozen: base},
				{Device: "vdb", Index: 1, Action: ActionMerge, Frozen: bbase, Child: b1, Method: MethodActiveCommit, Garbage: []string{b1}},
			}},
		},
		{
			name: "internal disks of a record are not the merge planner's",
			in: Input{
				Graph: graph(base, "", o1, base), Online: true, Chains: []Chain{chain("vda", o1, base)},
				Records: []Record{rec("i1", Disk{Device: "vda", Kind: KindInternal, File: o1})},
				Delete:  "i1",
			},
			want: &Plan{Snapshot: "i1"},
		},
		{
			name: "multi-disk: one disk refuses, so the whole plan is refused",
			in: Input{
				Graph: graph(base, "", o1, base, bbase, "", b1, bbase, x, bbase), Online: true,
				Chains:  []Chain{chain("vda", o1, base), chain("vdb", b1, bbase)},
				Records: []Record{rec("e1", ext("vda", base, o1), ext("vdb", bbase, b1)), rec("e9", ext("vdb", x, "/v/y.qcow2"))},
				Delete:  "e1",
			},
			refused: []refused{{"vdb", ReasonBranches, []string{bbase, b1, x}}},
		},
		{
			name: "multi-disk: every refusal is reported",
			in: Input{
				Graph: graph(o1, base, b1, bbase), Online: true,
				Chains:  []Chain{chain("vda", o1, base), chain("vdb", b1, bbase)},
				Records: []Record{rec("e1", ext("vda", base, o1), ext("vdb", bbase, b1))},
				Delete:  "e1",
			},
			refused: []refused{{"vda", ReasonFrozenMissing, []string{base}}, {"vdb", ReasonFrozenMissing, []string{bbase}}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := PlanDelete(tt.in)
			if tt.refused != nil {
				if err == nil {
					t.Fatalf("planned %+v, want refusals %+v", got, tt.refused)
				}
				if diff := cmp.Diff(tt.refused, refusals(t, err)); diff != "" {
					t.Fatalf("refusals (-want +got):\n%s\n%v", diff, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("plan (-want +got):\n%s", diff)
			}
		})
	}
}

func TestPlanDeleteNotFound(t *testing.T) {
	_, err := PlanDelete(Input{Records: linearRecs, Delete: "nope"})
	if !errors.Is(err, sentinel.ErrNotFound) {
		t.Fatalf("got %v, want ErrNotFound", err)
	}
}

func TestImages(t *testing.T) {
	recs := []Record{rec("e1", mark(ext("vda", base, o1), o1)).reverts(r1), rec("e2", ext("vda", o1, o2))}
	got := Images([]Chain{chain("vda", o2, o1, base)}, recs)
	want := []string{o2, o1, base, r1} // sorted
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}

func TestRefusalError(t *testing.T) {
	for r := range reasonNames {
		e := &Refusal{Snapshot: "s1", Device: "vda", Reason: r, Images: []string{"/a", "/b", "/c"}, Snapshots: []string{"t1"}}
		msg := e.Error()
		for _, want := range []string{`"s1"`, "vda", r.sentinel().Error(), "/a"} {
			if !strings.Contains(msg, want) {
				t.Errorf("%v: %q lacks %q", r, msg, want)
			}
		}
		if strings.Contains(msg, "?") || strings.Contains(msg, "Reason(") {
			t.Errorf("%v: %q", r, msg)
		}
	}
	if got := Reason(99).String(); got != "Reason(99)" {
		t.Errorf("unknown reason: %q", got)
	}
}

func TestRevertOverlayBackingAnImageIsKept(t *testing.T) {
	// r1, left behind, backs x that nothing names: neither is removed,
	// since the planner never removes an image something is backed by.
	in := Input{
		Graph: graph(base, "", o1, base, r1, base, x, r1), Online: true,
		Chains:  []Chain{chain("vda", o1, base)},
		Records: []Record{rec("e1", ext("vda", base, o1)).reverts(r1)},
		Delete:  "e1",
	}
	got, err := PlanDelete(in)
	if err != nil {
		t.Fatal(err)
	}
	if got.RevertOverlays != nil {
		t.Errorf("revert overlays removed: %v", got.RevertOverlays)
	}
}
