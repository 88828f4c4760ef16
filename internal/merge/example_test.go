package merge_test

import (
	"errors"
	"fmt"

	"github.com/vmsnap/vmsnap/internal/merge"
	"github.com/vmsnap/vmsnap/internal/sentinel"
)

// Deleting the leaf of a running domain merges its overlay, QEMU's active
// layer, into the frozen image with an active commit.
func ExamplePlanDelete() {
	in := merge.Input{
		Graph: merge.Graph{Images: map[string]merge.Image{
			"/v/disk.qcow2":    {},
			"/v/disk.s1.qcow2": {Backing: "/v/disk.qcow2"},
		}},
		Online:  true,
		Chains:  []merge.Chain{{Device: "vda", Top: "/v/disk.s1.qcow2", Backing: []string{"/v/disk.qcow2"}}},
		Records: []merge.Record{{Name: "s1", Disks: []merge.Disk{{Device: "vda", Kind: merge.KindExternal, File: "/v/disk.qcow2", Overlay: "/v/disk.s1.qcow2"}}}},
		Delete:  "s1",
	}
	plan, err := merge.PlanDelete(in)
	if err != nil {
		fmt.Println(err)
		return
	}
	for _, d := range plan.Disks {
		fmt.Println(d.Device, d.Action, d.Method, d.Child, "->", d.Frozen, "garbage", d.Garbage)
	}

	// Restarted on the frozen image by someone else: refused, nothing lost.
	in.Chains[0] = merge.Chain{Device: "vda", Top: "/v/disk.qcow2"}
	_, err = merge.PlanDelete(in)
	var r *merge.Refusal
	fmt.Println(errors.As(err, &r), r.Reason, errors.Is(err, sentinel.ErrInconsistent))
	// Output:
	// vda merge active-commit /v/disk.s1.qcow2 -> /v/disk.qcow2 garbage [/v/disk.s1.qcow2]
	// true frozen-active true
}
