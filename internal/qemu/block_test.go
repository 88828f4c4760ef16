package qemu

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/vmsnap/vmsnap/qmp"
)

func TestQDevName(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"/machine/peripheral/dev0/virtio-backend", "dev0"},
		{"/machine/peripheral-anon/device[3]/virtio-backend", "device[3]"},
		{"/machine/peripheral/cd/", "cd"},
		{"dev1", "dev1"},
		{"", ""},
		{"/machine/system.flash0", "system.flash0"},
		{"/machine/unattached/device[7]", "device[7]"},
		{"/machine/peripheral", "peripheral"},
	} {
		if got := QDevName(tc.in); got != tc.want {
			t.Errorf("QDevName(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestIsSnapshotMissing(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		// QEMU 7.2's blockdev-snapshot-delete-internal-sync.
		{&qmp.Error{Class: "GenericError", Desc: "Snapshot with id 'null' and name 's1' does not exist on device 'disk0'"}, true},
		{fmt.Errorf("wrapped: %w", &qmp.Error{Class: "GenericError", Desc: "Snapshot with id 'null' and name 's1' does not exist on device 'disk0'"}), true},
		{&qmp.Error{Class: "GenericError", Desc: "snapshot not found"}, true},
		{&qmp.Error{Class: "DeviceNotFound", Desc: "Cannot find device='nodisk' nor node-name='nodisk'"}, false},
		{&qmp.Error{Class: "GenericError", Desc: "Device 'disk0' is writable but does not support snapshots"}, false},
		{errors.New("snapshot not found"), false}, // not QEMU's reply
		{nil, false},
	} {
		if got := IsSnapshotMissing(tc.err); got != tc.want {
			t.Errorf("IsSnapshotMissing(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}

// TestBlockDevicesCaptured decodes query-block from QEMU 7.2 with every
// kind of disk the engine must tell apart (see testdata/README).
func TestBlockDevicesCaptured(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("testdata", "query-block.json"))
	if err != nil {
		t.Fatal(err)
	}
	var blocks []BlockDevice
	if err := json.Unmarshal(data, &blocks); err != nil {
		t.Fatal(err)
	}
	type row struct {
		Name, Node, Driver, Format, File string
		RO, Removable, Medium, Temp      bool
		Depth                            int
		Backing                          []string
		Snaps                            int
	}
	var got []row
	for _, b := range blocks {
		r := row{Name: b.Name(), Removable: b.Removable, Medium: b.Inserted != nil}
		if in := b.Inserted; in != nil {
			r.Node, r.Driver, r.Format, r.File, r.RO, r.Temp, r.Depth = in.Node, in.Driver, in.Image.Format, in.File, in.ReadOnly, in.Temporary(), in.BackingFileDepth
			r.Backing, r.Snaps = in.Image.BackingFiles(), len(in.Image.Snapshots)
			if len(r.File) > 20 {
				r.File = r.File[:20]
			}
		}
		got = append(got, r)
	}
	want := []row{
		{Name: "pflash0", Node: "#block365", Driver: "raw", Format: "raw", File: "/tmp/cap/code.fd", RO: true, Medium: true},
		{Name: "pflash1", Node: "#block563", Driver: "raw", Format: "raw", File: "/tmp/cap/vars.fd", Medium: true},
		{Name: "rawdrv", Node: "#block729", Driver: "raw", Format: "raw", File: "/tmp/cap/raw.img", Medium: true},
		{Name: "cd0", Removable: true},
		{Name: "ro0", Node: "#block960", Driver: "qcow2", Format: "qcow2", File: "/tmp/cap/ro.qcow2", RO: true, Medium: true},
		{Name: "tmp0", Node: "#block1691", Driver: "qcow2", Format: "qcow2", File: `json:{"backing": {"d`, Medium: true, Temp: true, Depth: 1, Backing: []string{"/tmp/cap/tmp.qcow2"}},
		{Name: "dev0", Node: "disk0", Driver: "qcow2", Format: "qcow2", File: "/tmp/cap/top.qcow2", Medium: true, Depth: 1, Backing: []string{"/tmp/cap/base.qcow2"}, Snaps: 1},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("query-block (-want +got):\n%s", diff)
	}
	dev0 := blocks[6].Inserted.Image
	if dev0.Backing != "/tmp/cap/base.qcow2" || dev0.BackingImage.Snapshots[0].Name != "inbase" || dev0.Snapshots[0].Name != "intop" {
		t.Errorf("dev0 image %+v", dev0)
	}
	if blocks[3].TrayOpen == nil || *blocks[3].TrayOpen {
		t.Errorf("cd0 tray %v, want closed", blocks[3].TrayOpen)
	}
	if c := blocks[5].Inserted.Cache; c == nil || !c.NoFlush || !c.Writeback {
		t.Errorf("tmp0 cache %+v, want writeback no-flush (cache=unsafe of -snapshot)", c)
	}
}

func TestNamedNodesCaptured(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("testdata", "query-named-block-nodes.json"))
	if err != nil {
		t.Fatal(err)
	}
	var nodes []Node
	if err := json.Unmarshal(data, &nodes); err != nil {
		t.Fatal(err)
	}
	byFile := FormatNodesByFile(nodes)
	for file, node := range map[string]string{
		"/tmp/cap/top.qcow2":  "disk0",
		"/tmp/cap/base.qcow2": byFile["/tmp/cap/base.qcow2"],
		"/tmp/cap/raw.img":    "#block729",
	} {
		if byFile[file] != node || node == "" {
			t.Errorf("node of %s: %q, want %q", file, byFile[file], node)
		}
	}
	for _, n := range nodes {
		if byFile[n.File] == n.Node && (n.Driver == "file" || n.Driver == "host_device") {
			t.Errorf("protocol node %s (%s) chosen for %s", n.Node, n.Driver, n.File)
		}
		if n.Image.BackingImage != nil {
			t.Errorf("flat node %s has a nested backing image", n.Node)
		}
	}
}
