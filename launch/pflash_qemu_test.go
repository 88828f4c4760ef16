package launch

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmsnap/vmsnap"
	"github.com/vmsnap/vmsnap/internal/qemu"
	"github.com/vmsnap/vmsnap/internal/qemutest"
	"github.com/vmsnap/vmsnap/qmp"
)

const ovmfVars = "/usr/share/OVMF/OVMF_VARS.fd"

// TestRelaunchPflashOverlayRealQEMU runs an OVMF guest whose UEFI
// variables are a writable flash, puts them on an external overlay node
// with blockdev-snapshot-sync as vmsnap does, and reverts: it names the
// disk as vmsnap does from query-block (its device name and the overlay's
// node name, which the command line does not declare), checks the launch
// and relaunches onto a new overlay over the variables image. The new
// QEMU must run the flash on that overlay as qcow2 over the variables
// image in its format, read the variables written before the snapshot,
// not what the discarded overlay held, and warn about nothing deprecated.
func TestRelaunchPflashOverlayRealQEMU(t *testing.T) {
	qemutest.Require(t)
	for _, f := range []string{ovmfCode, ovmfVars} {
		if _, err := os.Stat(f); err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("OVMF is missing (apt-get install ovmf): %v", err)
			}
			t.Skipf("OVMF is missing (apt-get install ovmf): %v", err)
		}
	}
	q := func(s string) string { b, _ := json.Marshal(s); return string(b) }
	tests := []struct {
		name, format string
		argv         func(vars string) []string
		device       string // vmsnap's name of the vars disk (query-block)
		topNode      string // the vars top node name the new QEMU must keep
	}{
		{
			name: "-machine pflash1= JSON raw", format: "raw", device: "system.flash1", topNode: "libvirt-pflash1-format",
			argv: func(vars string) []string {
				return []string{"-machine", "q35,accel=tcg,pflash0=libvirt-pflash0-format,pflash1=libvirt-pflash1-format",
					"-blockdev", `{"driver":"file","filename":` + q(ovmfCode) + `,"node-name":"libvirt-pflash0-storage","auto-read-only":true,"discard":"unmap"}`,
					"-blockdev", `{"node-name":"libvirt-pflash0-format","read-only":true,"driver":"raw","file":"libvirt-pflash0-storage"}`,
					"-blockdev", `{"driver":"file","filename":` + q(vars) + `,"node-name":"libvirt-pflash1-storage","auto-read-only":true,"discard":"unmap"}`,
					"-blockdev", `{"node-name":"libvirt-pflash1-format","read-only":false,"driver":"raw","file":"libvirt-pflash1-storage"}`}
			},
		},
		{
			name: "-machine pflash1= JSON qcow2 backing null", format: "qcow2", device: "system.flash1", topNode: "libvirt-pflash1-format",
			argv: func(vars string) []string {
				return []string{"-machine", "q35,accel=tcg,pflash0=libvirt-pflash0-format,pflash1=libvirt-pflash1-format",
					"-blockdev", `{"driver":"file","filename":` + q(ovmfCode) + `,"node-name":"libvirt-pflash0-storage","auto-read-only":true,"discard":"unmap"}`,
					"-blockdev", `{"node-name":"libvirt-pflash0-format","read-only":true,"driver":"raw","file":"libvirt-pflash0-storage"}`,
					"-blockdev", `{"driver":"file","filename":` + q(vars) + `,"node-name":"libvirt-pflash1-storage","auto-read-only":true,"discard":"unmap"}`,
					"-blockdev", `{"node-name":"libvirt-pflash1-format","read-only":false,"driver":"qcow2","file":"libvirt-pflash1-storage","backing":null}`}
			},
		},
		{
			name: "-machine pflash1= key=value qcow2 backing null", format: "qcow2", device: "system.flash1", topNode: "vars",
			argv: func(vars string) []string {
				return []string{"-machine", "q35,accel=tcg,pflash0=code,pflash1=vars",
					"-blockdev", "driver=file,filename=" + EscapeOptionValue(ovmfCode) + ",node-name=code-file,read-only=on",
					"-blockdev", "node-name=code,driver=raw,file=code-file,read-only=on",
					"-blockdev", "driver=file,filename=" + EscapeOptionValue(vars) + ",node-name=vars-file",
					"-blockdev", "node-name=vars,driver=qcow2,file=vars-file,backing="}
			},
		},
		{
			name: "-drive if=pflash raw", format: "raw", device: "pflash1",
			argv: func(vars string) []string {
				return []string{"-machine", "q35,accel=tcg",
					"-drive", "if=pflash,format=raw,unit=0,readonly=on,file=" + EscapeOptionValue(ovmfCode),
					"-drive", "if=pflash,format=raw,unit=1,file=" + EscapeOptionValue(vars)}
			},
		},
	}
	const patternOff = 0x10000
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := testCtx(t)
			dir, err := os.MkdirTemp("", "launch-pflash")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { os.RemoveAll(dir) })
			imgDir := filepath.Join(dir, "vm, 1")
			if err := os.Mkdir(imgDir, 0o700); err != nil {
				t.Fatal(err)
			}
			vars := filepath.Join(imgDir, "VARS."+tt.format)
			qemutest.Img(t, "convert", "-q", "-f", "raw", "-O", tt.format, ovmfVars, vars)
			qemuIO(t, "-f", tt.format, "-c", fmt.Sprintf("write -P 0x5a %d 4096", patternOff), vars)

			sock := filepath.Join(dir, "q.sock")
			argv := append([]string{"qemu-system-x86_64", "-nodefaults", "-display", "none", "-m", "64", "-S"}, tt.argv(vars)...)
			argv = append(argv, "-qmp", "unix:"+sock+",server=on,wait=off")
			e := &Exec{Argv: argv, Socket: sock, LogDir: dir}
			t.Cleanup(func() { e.Close() })
			mon, err := e.Start(ctx, vmsnap.LaunchSpec{})
			if err != nil {
				t.Fatalf("first start: %v", err)
			}

			// An external snapshot of the vars, as vmsnap takes it.
			before := varsBlock(t, mon)
			ext := filepath.Join(imgDir, "VARS.ext.qcow2")
			qemutest.Img(t, "create", "-q", "-f", "qcow2", "-F", tt.format, "-b", vars, ext)
			if err := mon.Execute(ctx, "blockdev-snapshot-sync", map[string]any{
				"node-name": before.Inserted.Node, "snapshot-file": ext, "snapshot-node-name": "vmsnap-5f3a9c01",
				"format": "qcow2", "mode": "existing"}, nil); err != nil {
				t.Fatalf("blockdev-snapshot-sync: %v", err)
			}
			hmpQemuIO(t, mon, "vmsnap-5f3a9c01", fmt.Sprintf("write -P 0x33 %d 4096", patternOff))
			after := varsBlock(t, mon)
			ld := vmsnap.LaunchDisk{Device: after.Name(), Node: after.Inserted.Node}
			if ld.Device != tt.device || ld.Node != "vmsnap-5f3a9c01" {
				t.Fatalf("query-block names the vars %+v; want device %s on node vmsnap-5f3a9c01", ld, tt.device)
			}
			files, err := DiskFiles(ctx, mon, e.Argv)
			if err != nil || files[tt.device] != vars {
				t.Errorf("DiskFiles = %v, %v; want %s: %s", files, err, tt.device, vars)
			}

			// Revert: a new overlay over the vars image.
			ld.File = filepath.Join(imgDir, "VARS.ext.live.qcow2")
			qemutest.Img(t, "create", "-q", "-f", "qcow2", "-F", tt.format, "-b", vars, ld.File)
			spec := vmsnap.LaunchSpec{Disks: []vmsnap.LaunchDisk{ld}}
			if err := e.CheckLaunch(ctx, spec); err != nil {
				t.Fatalf("CheckLaunch: %v", err)
			}
			mon, err = e.Relaunch(ctx, mon, spec)
			if err != nil {
				t.Fatalf("Relaunch: %v\nargv %q", err, e.Argv)
			}
			t.Cleanup(func() { mon.Close() })
			t.Logf("new argv: %q", e.Argv)

			top := queryDisk(t, mon, "system.flash1")
			if top.Drv != "qcow2" || top.File != ld.File || top.Image.Backing == nil ||
				top.Image.Backing.Filename != vars || top.Image.Backing.Format != tt.format {
				t.Fatalf("the new QEMU's vars: %+v; want %s as qcow2 over %s (%s)", top, ld.File, vars, tt.format)
			}
			if tt.topNode != "" && top.NodeName != tt.topNode {
				t.Errorf("vars top node %q, want %q kept for -machine pflash1=", top.NodeName, tt.topNode)
			}
			if code := queryDisk(t, mon, "system.flash0"); code.File != ovmfCode || code.Drv != "raw" {
				t.Errorf("the code flash: %+v", code)
			}
			ioName := top.NodeName
			if tt.topNode == "" {
				ioName = tt.device
			}
			hmpQemuIO(t, mon, ioName, fmt.Sprintf("read -P 0x5a %d 4096", patternOff))
			log := waitLog(t, filepath.Join(dir, "qemu.log"), "read 4096/4096")
			last := log[strings.LastIndex(log, "=== "):]
			if strings.Contains(last, "Pattern verification failed") {
				t.Fatalf("the variables written before the snapshot do not read back:\n%s", last)
			}
			if strings.Contains(last, "deprecated") {
				t.Errorf("the relaunched QEMU warns about a deprecated option:\n%s", last)
			}
			// The relaunched QEMU's own names find the disk again.
			if _, err := e.Plan(ctx, vmsnap.LaunchSpec{Disks: []vmsnap.LaunchDisk{{Device: tt.device, Node: top.NodeName, File: ld.File}}}); err != nil {
				t.Errorf("Plan on the running disks: %v", err)
			}
		})
	}
}

// varsBlock returns query-block's entry for the UEFI variables flash.
func varsBlock(t *testing.T, mon qmp.Monitor) qemu.BlockDevice {
	t.Helper()
	blocks, err := qemu.BlockDevices(testCtx(t), mon)
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range blocks {
		if b.QDev == "/machine/system.flash1" && b.Inserted != nil {
			return b
		}
	}
	t.Fatalf("query-block has no /machine/system.flash1: %+v", blocks)
	return qemu.BlockDevice{}
}

// hmpQemuIO runs a qemu-io command on a disk of the running QEMU; its
// result goes to QEMU's output.
func hmpQemuIO(t *testing.T, mon qmp.Monitor, disk, cmd string) {
	t.Helper()
	var out string
	if err := mon.Execute(testCtx(t), "human-monitor-command", map[string]any{"command-line": fmt.Sprintf("qemu-io %s %q", disk, cmd)}, &out); err != nil || out != "" {
		t.Fatalf("qemu-io %s %q: %q, %v", disk, cmd, out, err)
	}
}
