package merge

import (
	"testing"

	"github.com/google/go-cmp/cmp"
)

// The delete of e2 (the middle of e1 <- e2 <- e3) interrupted after
// QEMU's intermediate commit of o2 into o1: QEMU rewrote o3's backing link
// to o1, o2 still exists, the records are as before.
var (
	middleCommitted = graph(base, "", o1, base, o2, o1, o3, o1)
	middleChain     = chain("vda", o3, o1, base)
	middleRecs      = func(marked bool) []Record {
		d := ext("vda", o1, o2)
		if marked {
			d = mark(d, o2)
		}
		return []Record{rec("e1", ext("vda", base, o1)), rec("e2", d), rec("e3", ext("vda", o2, o3))}
	}
	// ... and after the bookkeeping repointed e3 to o1.
	middleRenamed = []Record{rec("e1", ext("vda", base, o1)), rec("e2", mark(ext("vda", o1, o2), o2)), rec("e3", ext("vda", o1, o3))}
)

func TestClassify(t *testing.T) {
	tests := []struct {
		name    string
		in      Input
		want    []DiskProgress
		refused []refused
	}{
		{
			name: "nothing happened yet",
			in:   Input{Graph: linearGraph, Online: true, Chains: []Chain{linearChain}, Records: middleRecs(true), Delete: "e2", Resume: true},
			want: []DiskProgress{{Device: "vda", Progress: ProgressNotStarted, Child: o2}},
		},
		{
			name: "QEMU's commit done, the same QEMU runs: merged",
			in:   Input{Graph: middleCommitted, Online: true, Chains: []Chain{middleChain}, Records: middleRecs(true), Delete: "e2", Resume: true, SameQEMU: true},
			want: []DiskProgress{{Device: "vda", Progress: ProgressMerged, Child: o2, Relinked: []string{o3}}},
		},
		{
			name: "without a progress mark the child is inferred from e3's record",
			in:   Input{Graph: middleCommitted, Online: true, Chains: []Chain{middleChain}, Records: middleRecs(false), Delete: "e2", Resume: true, SameQEMU: true},
			want: []DiskProgress{{Device: "vda", Progress: ProgressMerged, Child: o2, Relinked: []string{o3}}},
		},
		{
			name: "QEMU was killed, the domain is shut off: the link is not trusted",
			in:   Input{Graph: middleCommitted, Chains: []Chain{middleChain}, Records: middleRecs(true), Delete: "e2", Resume: true},
			want: []DiskProgress{{Device: "vda", Progress: ProgressLinkRewritten, Child: o2, Relinked: []string{o3}}},
		},
		{
			name:    "QEMU was killed and restarted on the rewritten chain",
			in:      Input{Graph: middleCommitted, Online: true, Chains: []Chain{middleChain}, Records: middleRecs(true), Delete: "e2", Resume: true},
			refused: []refused{{"vda", ReasonRelinkOpen, []string{o2, o3}}},
		},
		{
			name: "records repointed, the same QEMU runs",
			in:   Input{Graph: middleCommitted, Online: true, Chains: []Chain{middleChain}, Records: middleRenamed, Delete: "e2", Resume: true, SameQEMU: true},
			want: []DiskProgress{{Device: "vda", Progress: ProgressMerged, Child: o2, Relinked: []string{o3}, Renamed: []string{"e3"}}},
		},
		{
			name: "records repointed and the child removed: merged whoever runs",
			in:   Input{Graph: graph(base, "", o1, base, o3, o1), Chains: []Chain{middleChain}, Records: middleRenamed, Delete: "e2", Resume: true},
			want: []DiskProgress{{Device: "vda", Progress: ProgressMerged, Child: o2, Relinked: []string{o3}, Renamed: []string{"e3"}}},
		},
		{
			name: "active commit of the leaf completed, the same QEMU runs on the frozen image",
			in: Input{
				Graph: linearGraph, Online: true, Chains: []Chain{chain("vda", o2, o1, base)},
				Records: []Record{rec("e1", ext("vda", base, o1)), rec("e2", ext("vda", o1, o2)), rec("e3", mark(ext("vda", o2, o3), o3))},
				Delete:  "e3", Resume: true, SameQEMU: true,
			},
			want: []DiskProgress{{Device: "vda", Progress: ProgressMerged, Child: o3}},
		},
		{
			name: "another QEMU runs on the leaf's frozen image",
			in: Input{
				Graph: linearGraph, Online: true, Chains: []Chain{chain("vda", o2, o1, base)},
				Records: []Record{rec("e1", ext("vda", base, o1)), rec("e2", ext("vda", o1, o2)), rec("e3", mark(ext("vda", o2, o3), o3))},
				Delete:  "e3", Resume: true,
			},
			refused: []refused{{"vda", ReasonFrozenActive, []string{o2, o3}}},
		},
		{
			name: "QEMU was killed after completing the leaf's active commit and restarted on the frozen image: merged",
			in: Input{
				Graph: linearGraph, Online: true, Chains: []Chain{chain("vda", o2, o1, base)},
				Records: []Record{rec("e1", ext("vda", base, o1)), rec("e2", ext("vda", o1, o2)), rec("e3", pivoting(mark(ext("vda", o2, o3), o3)))},
				Delete:  "e3", Resume: true,
			},
			want: []DiskProgress{{Device: "vda", Progress: ProgressMerged, Child: o3}},
		},
		{
			name: "the same, the domain shut off on the frozen image: merged",
			in: Input{
				Graph: linearGraph, Chains: []Chain{chain("vda", o2, o1, base)},
				Records: []Record{rec("e1", ext("vda", base, o1)), rec("e2", ext("vda", o1, o2)), rec("e3", pivoting(mark(ext("vda", o2, o3), o3)))},
				Delete:  "e3", Resume: true,
			},
			want: []DiskProgress{{Device: "vda", Progress: ProgressMerged, Child: o3}},
		},
		{
			name: "the pivot mark, but the domain runs on the leaf: the merge is redone",
			in: Input{
				Graph: linearGraph, Online: true, Chains: []Chain{chain("vda", o3, o2, o1, base)},
				Records: []Record{rec("e1", ext("vda", base, o1)), rec("e2", ext("vda", o1, o2)), rec("e3", pivoting(mark(ext("vda", o2, o3), o3)))},
				Delete:  "e3", Resume: true,
			},
			want: []DiskProgress{{Device: "vda", Progress: ProgressNotStarted, Child: o3}},
		},
		{
			name: "the marked child is no longer backed by the frozen image",
			in: Input{
				Graph: graph(base, "", o1, base, o2, x), Online: true, Chains: []Chain{chain("vda", o2, x)},
				Records: []Record{rec("e1", ext("vda", base, o1)), rec("e2", mark(ext("vda", o1, o2), o2))},
				Delete:  "e2", Resume: true,
			},
			refused: []refused{{"vda", ReasonChainMismatch, []string{o2, o1}}},
		},
		{
			name: "without a mark, two images look merged: refused",
			in: Input{
				Graph: graph(base, "", o1, base, x, base, o2, base, o3, base), Chains: []Chain{chain("vda", o3, base)},
				Records: []Record{rec("e1", ext("vda", base, o1)), rec("e2", ext("vda", o1, o2)), rec("e3", ext("vda", x, o3))},
				Delete:  "e1", Resume: true,
			},
			refused: []refused{{"vda", ReasonChainMismatch, []string{o1, base}}},
		},
		{
			name: "a Removed disk is done",
			in:   Input{Graph: linearGraph, Records: []Record{rec("e3", removed(ext("vda", o2, o3)))}, Delete: "e3", Resume: true},
			want: []DiskProgress{{Device: "vda", Progress: ProgressDone}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, dp := range tt.want {
				if dp.Progress.String() == "" || dp.Progress.String()[0] == 'P' {
					t.Errorf("Progress %d has no name", dp.Progress)
				}
			}
			got, err := Classify(tt.in)
			if tt.refused != nil {
				if err == nil {
					t.Fatalf("classified %+v, want refusals %+v", got, tt.refused)
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
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

// PlanDelete on the states an interrupted delete leaves: it finishes or
// redoes the merge where a fresh plan refuses with a false reason.
func TestPlanDeleteResume(t *testing.T) {
	tests := []struct {
		name    string
		in      Input
		want    *Plan
		refused []refused
	}{
		{
			name:    "without the intent the rewritten link looks like branches (issue 10, item 2)",
			in:      Input{Graph: middleCommitted, Online: true, Chains: []Chain{middleChain}, Records: middleRecs(true), Delete: "e2"},
			refused: []refused{{"vda", ReasonBranches, []string{o1, o3, o2}}},
		},
		{
			name:    "without the intent the repointed record looks like a shared frozen image (issue 10, item 2)",
			in:      Input{Graph: middleCommitted, Online: true, Chains: []Chain{middleChain}, Records: middleRenamed, Delete: "e2"},
			refused: []refused{{"vda", ReasonSharedFrozen, []string{o1, o3}}},
		},
		{
			name: "merged by the same QEMU: only the bookkeeping is left",
			in:   Input{Graph: middleCommitted, Online: true, Chains: []Chain{middleChain}, Records: middleRecs(true), Delete: "e2", Resume: true, SameQEMU: true},
			want: &Plan{Snapshot: "e2", Disks: []DiskPlan{{
				Device: "vda", Action: ActionFinish, Frozen: o1, Child: o2,
				Repoint: []Ref{{"e3", 0}}, Garbage: []string{o2},
			}}},
		},
		{
			name: "merged, records repointed: only the garbage is left",
			in:   Input{Graph: middleCommitted, Online: true, Chains: []Chain{middleChain}, Records: middleRenamed, Delete: "e2", Resume: true, SameQEMU: true},
			want: &Plan{Snapshot: "e2", Disks: []DiskPlan{{
				Device: "vda", Action: ActionFinish, Frozen: o1, Child: o2, Garbage: []string{o2},
			}}},
		},
		{
			name: "QEMU killed after rewriting the link (issue 10, item 3): relink o3 onto o2 and merge again",
			in:   Input{Graph: middleCommitted, Chains: []Chain{middleChain}, Records: middleRecs(true), Delete: "e2", Resume: true},
			want: &Plan{Snapshot: "e2", Disks: []DiskPlan{{
				Device: "vda", Action: ActionMerge, Frozen: o1, Child: o2, Method: MethodOfflineCommit,
				Relink: []string{o3}, Rebase: []string{o3}, Repoint: []Ref{{"e3", 0}}, Garbage: []string{o2},
			}}},
		},
		{
			name: "the same, after the records were repointed",
			in:   Input{Graph: middleCommitted, Chains: []Chain{middleChain}, Records: middleRenamed, Delete: "e2", Resume: true},
			want: &Plan{Snapshot: "e2", Disks: []DiskPlan{{
				Device: "vda", Action: ActionMerge, Frozen: o1, Child: o2, Method: MethodOfflineCommit,
				Relink: []string{o3}, Rebase: []string{o3}, Garbage: []string{o2},
			}}},
		},
		{
			name: "nothing happened yet: the fresh plan",
			in:   Input{Graph: linearGraph, Online: true, Chains: []Chain{linearChain}, Records: middleRecs(true), Delete: "e2", Resume: true},
			want: &Plan{Snapshot: "e2", Disks: []DiskPlan{{
				Device: "vda", Action: ActionMerge, Frozen: o1, Child: o2, Method: MethodIntermediateCommit,
				Repoint: []Ref{{"e3", 0}}, Garbage: []string{o2},
			}}},
		},
		{
			name: "leaf: active commit completed, no progress mark, same QEMU",
			in: Input{
				Graph: linearGraph, Online: true, Chains: []Chain{chain("vda", o2, o1, base)},
				Records: linearRecs, Delete: "e3", Resume: true, SameQEMU: true,
			},
			want: &Plan{Snapshot: "e3", Disks: []DiskPlan{{Device: "vda", Action: ActionFinish, Frozen: o2, Garbage: []string{o3}}}},
		},
		{
			name: "qemu-img commit done and o3 rebased while QEMU ran elsewhere",
			in: Input{
				Graph: graph(base, "", o1, base, o2, o1, o3, o1, r1, base), Online: true,
				Chains:  []Chain{chain("vda", r1, base)},
				Records: []Record{rec("e1", ext("vda", base, o1)).reverts(r1), rec("e2", mark(ext("vda", o1, o2), o2)), rec("e3", ext("vda", o2, o3))},
				Delete:  "e2", Resume: true, SameQEMU: true,
			},
			want: &Plan{Snapshot: "e2", Disks: []DiskPlan{{
				Device: "vda", Action: ActionFinish, Frozen: o1, Child: o2,
				Repoint: []Ref{{"e3", 0}}, Garbage: []string{o2},
			}}},
		},
		{
			name: "two disks: one finished, one merged by QEMU, and the dead revert overlay",
			in: Input{
				Graph: graph(base, "", o1, base, r1, base, bbase, "", b1, bbase), Online: true,
				Chains:  []Chain{chain("vda", base), chain("vdb", bbase)},
				Records: []Record{rec("e1", removed(ext("vda", base, o1)), mark(ext("vdb", bbase, b1), b1)).reverts(r1)},
				Delete:  "e1", Resume: true, SameQEMU: true,
			},
			want: &Plan{
				Snapshot: "e1",
				Disks: []DiskPlan{
					{Device: "vda", Action: ActionDone, Frozen: base},
					{Device: "vdb", Index: 1, Action: ActionFinish, Frozen: bbase, Child: b1, Garbage: []string{b1}},
				},
				RevertOverlays: []string{r1},
			},
		},
		{
			name:    "a refused classification refuses the plan",
			in:      Input{Graph: middleCommitted, Online: true, Chains: []Chain{middleChain}, Records: middleRecs(true), Delete: "e2", Resume: true},
			refused: []refused{{"vda", ReasonRelinkOpen, []string{o2, o3}}},
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

// pivoting sets the pivot mark of d.
func pivoting(d Disk) Disk { d.Pivoting = true; return d }
