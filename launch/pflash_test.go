package launch

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/vmsnap/vmsnap"
	"github.com/vmsnap/vmsnap/internal/qemu"
	"github.com/vmsnap/vmsnap/internal/qemutest"
)

// query-block as QEMU 7.2 answers it for an OVMF guest after
// blockdev-snapshot-sync put the UEFI variables on an overlay node named
// by the caller (trimmed to the members vmsnap reads). A flash given by
// -machine pflashN=<node> has no block backend: device is "" and vmsnap
// names the disk by its qdev path's last part, "system.flash1".
const (
	queryBlockPflashBlockdev = `[
{"device": "", "qdev": "/machine/system.flash0", "type": "unknown", "locked": false, "removable": false,
 "inserted": {"node-name": "libvirt-pflash0-format", "drv": "raw", "ro": true, "file": "/usr/share/OVMF/OVMF_CODE.fd", "backing_file_depth": 0,
  "image": {"virtual-size": 1966080, "filename": "/usr/share/OVMF/OVMF_CODE.fd", "format": "raw", "actual-size": 1966080, "dirty-flag": false}}},
{"device": "", "qdev": "/machine/system.flash1", "type": "unknown", "locked": false, "removable": false,
 "inserted": {"node-name": "vmsnap-5f3a9c01", "drv": "qcow2", "ro": false, "file": "/vm/VARS.ext.qcow2", "backing_file": "/vm/VARS.fd", "backing_file_depth": 1,
  "image": {"virtual-size": 131072, "filename": "/vm/VARS.ext.qcow2", "format": "qcow2", "cluster-size": 65536,
   "full-backing-filename": "/vm/VARS.fd", "backing-filename": "/vm/VARS.fd", "backing-filename-format": "raw",
   "backing-image": {"virtual-size": 131072, "filename": "/vm/VARS.fd", "format": "raw", "actual-size": 131072, "dirty-flag": false}}}}
]`
	// The same guest given its flash with -drive if=pflash: the device
	// is the block backend "pflash1", the node one QEMU named.
	queryBlockPflashDrive = `[
{"device": "pflash0", "qdev": "/machine/system.flash0", "type": "unknown", "locked": false, "removable": false,
 "inserted": {"node-name": "#block127", "drv": "raw", "ro": true, "file": "/usr/share/OVMF/OVMF_CODE.fd",
  "image": {"virtual-size": 1966080, "filename": "/usr/share/OVMF/OVMF_CODE.fd", "format": "raw"}}},
{"device": "pflash1", "qdev": "/machine/system.flash1", "type": "unknown", "locked": false, "removable": false,
 "inserted": {"node-name": "vmsnap-ab12", "drv": "qcow2", "ro": false, "file": "/vm/OVMF_VARS.ext.qcow2", "backing_file": "/vm/OVMF_VARS.fd",
  "image": {"virtual-size": 131072, "filename": "/vm/OVMF_VARS.ext.qcow2", "format": "qcow2", "full-backing-filename": "/vm/OVMF_VARS.fd",
   "backing-filename": "/vm/OVMF_VARS.fd", "backing-filename-format": "raw",
   "backing-image": {"virtual-size": 131072, "filename": "/vm/OVMF_VARS.fd", "format": "raw"}}}}
]`
)

// TestFindPflashFromQueryBlock finds each flash disk of a command line
// by the names vmsnap gives it from query-block (the device name, then
// the top node name, which after an external snapshot is an overlay node
// the command line does not declare).
func TestFindPflashFromQueryBlock(t *testing.T) {
	tests := []struct {
		name       string
		argv       []string
		queryBlock string
		want       map[string]string // vmsnap's device name -> command line image
	}{
		{"-machine pflashN= JSON blockdev", ovmfBlockdev, queryBlockPflashBlockdev,
			map[string]string{"system.flash0": "/usr/share/OVMF/OVMF_CODE.fd", "system.flash1": "/vm/VARS.fd"}},
		{"-drive if=pflash", ovmf, queryBlockPflashDrive,
			map[string]string{"pflash0": "/usr/share/OVMF/OVMF_CODE.fd", "pflash1": "/vm/OVMF_VARS.fd"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var blocks []qemu.BlockDevice
			if err := json.Unmarshal([]byte(tt.queryBlock), &blocks); err != nil {
				t.Fatal(err)
			}
			g, err := parseBlockGraph(tt.argv)
			if err != nil {
				t.Fatal(err)
			}
			got := map[string]string{}
			for _, b := range blocks {
				d, err := g.find([]string{b.Name(), b.Inserted.Node}, "")
				if err != nil || d == nil {
					t.Fatalf("find(%q, %q) = %v, %v", b.Name(), b.Inserted.Node, d, err)
				}
				got[b.Name()] = g.file(d)
			}
			if fmt.Sprint(got) != fmt.Sprint(tt.want) {
				t.Errorf("disks by query-block name = %v, want %v", got, tt.want)
			}
		})
	}
}

// TestPlanPflashOnOverlayNode plans a relaunch of the -machine pflash1=
// disk that vmsnap names as query-block does after an external snapshot
// ("system.flash1" on an overlay node the command line does not
// declare), in both -blockdev syntaxes, and checks the vars node chain is
// rewritten onto the new overlay.
func TestPlanPflashOnOverlayNode(t *testing.T) {
	qemutest.RequireImg(t)
	dir := t.TempDir()
	vars := filepath.Join(dir, "VARS, 1.fd")
	qemutest.Img(t, "create", "-q", "-f", "raw", vars, "128K")
	ovl := filepath.Join(dir, "VARS.ext.live.qcow2")
	qemutest.Img(t, "create", "-q", "-f", "qcow2", "-F", "raw", "-b", vars, ovl)
	sock := filepath.Join(dir, "q.sock")
	q := func(s string) string { b, _ := json.Marshal(s); return string(b) }
	for name, argv := range map[string][]string{
		"json": {"qemu-system-x86_64", "-machine", "pc-q35-7.2,pflash0=libvirt-pflash0-format,pflash1=libvirt-pflash1-format",
			"-blockdev", `{"driver":"file","filename":"/usr/share/OVMF/OVMF_CODE.fd","node-name":"libvirt-pflash0-storage","read-only":true}`,
			"-blockdev", `{"node-name":"libvirt-pflash0-format","read-only":true,"driver":"raw","file":"libvirt-pflash0-storage"}`,
			"-blockdev", `{"driver":"file","filename":` + q(vars) + `,"node-name":"libvirt-pflash1-storage"}`,
			"-blockdev", `{"node-name":"libvirt-pflash1-format","read-only":false,"driver":"raw","file":"libvirt-pflash1-storage"}`,
			"-qmp", "unix:" + sock + ",server=on,wait=off"},
		"keyval": {"qemu-system-x86_64", "-machine", "q35,pflash1=libvirt-pflash1-format,pflash0=libvirt-pflash0-format",
			"-blockdev", "driver=file,filename=/usr/share/OVMF/OVMF_CODE.fd,node-name=libvirt-pflash0-storage,read-only=on",
			"-blockdev", "node-name=libvirt-pflash0-format,read-only=on,driver=raw,file=libvirt-pflash0-storage",
			"-blockdev", "driver=file,filename=" + EscapeOptionValue(vars) + ",node-name=libvirt-pflash1-storage",
			"-blockdev", "node-name=libvirt-pflash1-format,driver=raw,file=libvirt-pflash1-storage",
			"-qmp", "unix:" + sock + ",server=on,wait=off"},
	} {
		t.Run(name, func(t *testing.T) {
			e := &Exec{Argv: argv, Socket: sock}
			spec := vmsnap.LaunchSpec{Disks: []vmsnap.LaunchDisk{{Device: "system.flash1", Node: "vmsnap-5f3a9c01", File: ovl}}}
			if err := e.CheckLaunch(testCtx(t), spec); err != nil {
				t.Fatalf("CheckLaunch: %v", err)
			}
			planned, err := e.Plan(testCtx(t), spec)
			if err != nil {
				t.Fatal(err)
			}
			g, err := parseBlockGraph(planned)
			if err != nil {
				t.Fatal(err)
			}
			d, err := g.find([]string{"system.flash1"}, "")
			if err != nil || d == nil {
				t.Fatalf("find after the rewrite: %v, %v", d, err)
			}
			if files := g.files(d); !slices.Equal(files, []string{ovl, vars}) {
				t.Errorf("the vars chain opens %q; want the overlay over %s\nargv %q", files, vars, planned)
			}
			if top, _ := d.format.opts.str("driver"); top != "qcow2" || d.label() != "libvirt-pflash1-format" {
				t.Errorf("vars top node %s is %s; want libvirt-pflash1-format as qcow2", d.label(), top)
			}
			code, _ := g.find([]string{"system.flash0"}, "")
			if code == nil || g.file(code) != "/usr/share/OVMF/OVMF_CODE.fd" {
				t.Errorf("the code flash moved: %q", planned)
			}
			if strings.Contains(strings.Join(planned, " "), "backing=,") {
				t.Errorf("a deprecated null backing was written: %q", planned)
			}
		})
	}
	// A disk the command line does not declare is still refused.
	e := &Exec{Argv: []string{"qemu-system-x86_64", "-machine", "q35", "-qmp", "unix:" + sock + ",server=on,wait=off"}, Socket: sock}
	err := e.CheckLaunch(testCtx(t), vmsnap.LaunchSpec{Disks: []vmsnap.LaunchDisk{{Device: "system.flash1", Node: "vmsnap-5f3a9c01", File: ovl}}})
	if err == nil || !strings.Contains(err.Error(), "declares no -drive, -blockdev or -device") {
		t.Errorf("CheckLaunch without pflash = %v", err)
	}
}
