package vmsnap

import (
	"errors"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// The disks of the configurations real toolstacks run, as query-block
// shows them: every class once.
var (
	bootQcow2 = Disk{Device: "dev0", Node: "disk0", Format: "qcow2", File: "/vm/boot.qcow2"}
	dataRaw   = Disk{Device: "dev1", Node: "raw0", Format: "raw", File: "/vm/data.raw"}
	cdrom     = Disk{Device: "cd0", Node: "cd", Format: "raw", File: "/iso/install.iso", ReadOnly: true}
	ovmfCode  = Disk{Device: "pflash0", Node: "code", Format: "raw", File: "/usr/share/OVMF/OVMF_CODE.fd", ReadOnly: true, Firmware: true}
	varsRaw   = Disk{Device: "pflash1", Node: "vars", Format: "raw", File: "/vm/VARS.fd", Firmware: true}
	varsQcow2 = Disk{Device: "pflash1", Node: "vars", Format: "qcow2", File: "/vm/VARS.qcow2", Firmware: true}
	tempDisk  = Disk{Device: "dev2", Node: "#block123", Format: "qcow2", File: "json:{...}", Temporary: true}
)

func TestChooseDisks(t *testing.T) {
	internalFull := createPlan{kind: kindInternalFull, vmstate: vmstateJobs}
	internalHMP := createPlan{kind: kindInternalFull, vmstate: vmstateHMP}
	diskOnly := createPlan{kind: kindInternalDiskOnly}
	external := createPlan{kind: kindExternalFull}
	for _, tc := range []struct {
		name          string
		plan          createPlan
		all           []Disk
		want, exclude []string
		vmstate       string
		take, left    []string
		vmstateDisk   string
		err           error
	}{
		{name: "qcow2 and read-only media", plan: internalFull, all: []Disk{bootQcow2, cdrom, ovmfCode}, take: []string{"dev0"}, vmstateDisk: "dev0"},
		{name: "raw data disk refused for internal", plan: internalFull, all: []Disk{bootQcow2, dataRaw}, err: ErrUnsupported},
		{name: "raw data disk refused for disk-only internal", plan: diskOnly, all: []Disk{bootQcow2, dataRaw}, err: ErrUnsupported},
		{name: "raw data disk excluded explicitly", plan: internalFull, all: []Disk{bootQcow2, dataRaw}, exclude: []string{"dev1"}, take: []string{"dev0"}, left: []string{"dev1"}, vmstateDisk: "dev0"},
		{name: "raw data disk taken by an external snapshot", plan: external, all: []Disk{bootQcow2, dataRaw}, take: []string{"dev0", "dev1"}},
		{name: "raw UEFI vars refused for internal", plan: internalFull, all: []Disk{ovmfCode, varsRaw, bootQcow2}, err: ErrUnsupported},
		{name: "raw UEFI vars taken by an external snapshot", plan: external, all: []Disk{ovmfCode, varsRaw, bootQcow2}, take: []string{"pflash1", "dev0"}},
		{name: "qcow2 UEFI vars snapped, memory state on the disk", plan: internalFull, all: []Disk{ovmfCode, varsQcow2, bootQcow2}, take: []string{"pflash1", "dev0"}, vmstateDisk: "dev0"},
		{name: "only UEFI vars: no place for the memory state", plan: internalFull, all: []Disk{ovmfCode, varsQcow2}, err: ErrNoDisks},
		{name: "-snapshot disk refused", plan: external, all: []Disk{bootQcow2, tempDisk}, err: ErrUnsupported},
		{name: "-snapshot disk excluded", plan: diskOnly, all: []Disk{bootQcow2, tempDisk}, exclude: []string{"dev2"}, take: []string{"dev0"}, left: []string{"dev2"}},
		{name: "a chosen subset leaves the others out explicitly", plan: internalFull, all: []Disk{bootQcow2, dataRaw}, want: []string{"disk0"}, take: []string{"dev0"}, left: []string{"dev1"}, vmstateDisk: "dev0"},
		{name: "HMP cannot leave a disk out", plan: internalHMP, all: []Disk{bootQcow2, dataRaw}, exclude: []string{"dev1"}, err: ErrUnsupported},
		{name: "HMP: qcow2 UEFI vars first would get the memory state", plan: internalHMP, all: []Disk{ovmfCode, varsQcow2, bootQcow2}, err: ErrUnsupported},
		{name: "HMP: qcow2 UEFI vars after the disk", plan: internalHMP, all: []Disk{bootQcow2, ovmfCode, varsQcow2}, take: []string{"dev0", "pflash1"}, vmstateDisk: "dev0"},
		{name: "HMP: memory state disk other than the first", plan: internalHMP, all: []Disk{bootQcow2, {Device: "dev3", Node: "d3", Format: "qcow2", File: "/vm/d3.qcow2"}}, vmstate: "dev3", err: ErrUnsupported},
		{name: "a read-only disk named", plan: diskOnly, all: []Disk{bootQcow2, cdrom}, want: []string{"cd0"}, err: ErrUnsupported},
		{name: "an unknown disk", plan: diskOnly, all: []Disk{bootQcow2}, exclude: []string{"nope"}, err: ErrInvalidSpec},
		{name: "nothing writable", plan: diskOnly, all: []Disk{cdrom}, err: ErrNoDisks},
		{name: "memory state disk named", plan: internalFull, all: []Disk{bootQcow2, {Device: "dev3", Node: "d3", Format: "qcow2", File: "/vm/d3.qcow2"}}, vmstate: "dev3", take: []string{"dev0", "dev3"}, vmstateDisk: "dev3"},
		{name: "memory state disk not snapped", plan: internalFull, all: []Disk{bootQcow2, dataRaw}, exclude: []string{"dev1"}, vmstate: "dev1", err: ErrInvalidSpec},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := tc.plan.chooseDisks(tc.all, tc.want, tc.exclude, tc.vmstate)
			if tc.err != nil {
				if !errors.Is(err, tc.err) {
					t.Fatalf("err %v, want %v", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got := struct{ Take, Left []string }{diskNames(c.take), diskNames(c.excluded)}
			want := struct{ Take, Left []string }{tc.take, tc.left}
			if diff := cmp.Diff(want, got, cmpEmpty); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
			if c.vmstate.name() != tc.vmstateDisk && tc.plan.kind == kindInternalFull {
				t.Errorf("memory state on %q, want %q", c.vmstate.name(), tc.vmstateDisk)
			}
		})
	}
}

// Every refusal names the disk it is about.
func TestChooseDisksRefusalsNameTheDisk(t *testing.T) {
	for _, d := range []Disk{dataRaw, varsRaw, tempDisk} {
		_, err := createPlan{kind: kindInternalFull, vmstate: vmstateJobs}.chooseDisks([]Disk{bootQcow2, d}, nil, nil, "")
		var de *DiskError
		if !errors.As(err, &de) || de.Disk != d.Device {
			t.Errorf("%s: %v, want a DiskError naming it", d.Device, err)
		}
	}
}

var cmpEmpty = cmp.Transformer("empty", func(s []string) []string {
	if len(s) == 0 {
		return nil
	}
	return s
})
