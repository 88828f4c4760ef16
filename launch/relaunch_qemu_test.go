package launch

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vmsnap/vmsnap"
	"github.com/vmsnap/vmsnap/internal/qemu"
	"github.com/vmsnap/vmsnap/internal/qemutest"
	"github.com/vmsnap/vmsnap/qmp"
)

const ovmfCode = "/usr/share/OVMF/OVMF_CODE.fd"

// TestRelaunchOntoOverlayRealQEMU starts QEMU with the command lines
// toolstacks write, puts a disk on a qcow2 overlay of its image through
// Exec, and checks on the new QEMU that the overlay is opened as qcow2
// with the old image as its backing, and that data written to the old
// image before reads back through the new QEMU.
func TestRelaunchOntoOverlayRealQEMU(t *testing.T) {
	qemutest.Require(t)
	type setup struct {
		baseFormat string
		baseFrom   string // copy this file as the base (else a 1 MiB image)
		argv       func(dir, base string) []string
		disk       vmsnap.LaunchDisk
		block      string // how query-block names the disk: device or qdev id
		io         string // qemu-io's name for the disk
	}
	common := []string{"qemu-system-x86_64", "-machine", "accel=tcg", "-nodefaults", "-display", "none", "-m", "64", "-S"}
	tests := map[string]setup{
		"raw -drive": {
			baseFormat: "raw",
			argv: func(dir, base string) []string {
				return []string{"-drive", "file=" + EscapeOptionValue(base) + ",if=none,id=drive-virtio1,format=raw,cache=none,aio=threads",
					"-device", "virtio-blk-pci,drive=drive-virtio1,id=virtio1"}
			},
			disk: vmsnap.LaunchDisk{Device: "drive-virtio1"}, block: "drive-virtio1", io: "drive-virtio1",
		},
		"-hda": {
			baseFormat: "raw",
			argv:       func(dir, base string) []string { return []string{"-hda", base} },
			disk:       vmsnap.LaunchDisk{Device: "ide0-hd0"}, block: "ide0-hd0", io: "ide0-hd0",
		},
		"libvirt JSON raw": {
			baseFormat: "raw",
			argv: func(dir, base string) []string {
				return []string{
					"-machine", "pc-i440fx-7.2,usb=off",
					"-blockdev", fmt.Sprintf(`{"driver":"file","filename":%q,"node-name":"libvirt-1-storage","auto-read-only":true,"discard":"unmap"}`, base),
					"-blockdev", `{"node-name":"libvirt-1-format","read-only":false,"driver":"raw","file":"libvirt-1-storage"}`,
					"-device", `{"driver":"virtio-blk-pci","bus":"pci.0","addr":"0x5","drive":"libvirt-1-format","id":"virtio-disk1"}`,
				}
			},
			disk: vmsnap.LaunchDisk{Device: "virtio-disk1", Node: "libvirt-1-format"}, block: "virtio-disk1", io: "libvirt-1-format",
		},
		"libvirt JSON qcow2 backing null": {
			baseFormat: "qcow2",
			argv: func(dir, base string) []string {
				return []string{
					"-machine", "pc-i440fx-7.2,usb=off",
					"-blockdev", fmt.Sprintf(`{"driver":"file","filename":%q,"node-name":"libvirt-2-storage","auto-read-only":true,"discard":"unmap"}`, base),
					"-blockdev", `{"node-name":"libvirt-2-format","read-only":false,"driver":"qcow2","file":"libvirt-2-storage","backing":null}`,
					"-device", `{"driver":"virtio-blk-pci","bus":"pci.0","addr":"0x4","drive":"libvirt-2-format","id":"virtio-disk0","bootindex":1}`,
				}
			},
			disk: vmsnap.LaunchDisk{Device: "virtio-disk0", Node: "libvirt-2-format"}, block: "virtio-disk0", io: "libvirt-2-format",
		},
		"keyval qcow2 backing null": {
			baseFormat: "qcow2",
			argv: func(dir, base string) []string {
				return []string{
					"-blockdev", "driver=file,filename=" + EscapeOptionValue(base) + ",node-name=s0",
					"-blockdev", "node-name=f0,driver=qcow2,file=s0,backing=",
					"-device", "virtio-blk-pci,drive=f0,id=vd0",
				}
			},
			disk: vmsnap.LaunchDisk{Device: "vd0"}, block: "vd0", io: "f0",
		},
		"OVMF pflash vars": {
			baseFormat: "raw", baseFrom: "/usr/share/OVMF/OVMF_VARS.fd",
			argv: func(dir, base string) []string {
				return []string{
					"-drive", "if=pflash,format=raw,unit=0,readonly=on,file=" + ovmfCode,
					"-drive", "if=pflash,format=raw,unit=1,file=" + EscapeOptionValue(base),
				}
			},
			disk: vmsnap.LaunchDisk{Device: "pflash1"}, block: "pflash1", io: "pflash1",
		},
		"OVMF blockdev pflash vars": {
			baseFormat: "raw", baseFrom: "/usr/share/OVMF/OVMF_VARS.fd",
			argv: func(dir, base string) []string {
				return []string{
					"-machine", "pc,pflash0=code,pflash1=vars",
					"-blockdev", `{"driver":"file","filename":"` + ovmfCode + `","node-name":"code-file","read-only":true}`,
					"-blockdev", `{"node-name":"code","read-only":true,"driver":"raw","file":"code-file"}`,
					"-blockdev", fmt.Sprintf(`{"driver":"file","filename":%q,"node-name":"vars-file"}`, base),
					"-blockdev", `{"node-name":"vars","driver":"raw","file":"vars-file"}`,
				}
			},
			disk: vmsnap.LaunchDisk{Node: "vars"}, block: "vars", io: "vars",
		},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			if tt.baseFrom != "" {
				if _, err := os.Stat(tt.baseFrom); err != nil {
					if os.Getenv("CI") == "true" {
						t.Fatalf("OVMF is missing: %v", err)
					}
					t.Skipf("OVMF is missing: %v", err)
				}
			}
			ctx := testCtx(t)
			dir, err := os.MkdirTemp("", "launch")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { os.RemoveAll(dir) })
			imgDir := filepath.Join(dir, "images, é")
			if err := os.Mkdir(imgDir, 0o700); err != nil {
				t.Fatal(err)
			}
			base := filepath.Join(imgDir, "base disk."+tt.baseFormat)
			if tt.baseFrom != "" {
				b, err := os.ReadFile(tt.baseFrom)
				if err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(base, b, 0o600); err != nil {
					t.Fatal(err)
				}
			} else {
				qemutest.Img(t, "create", "-q", "-f", tt.baseFormat, base, "1M")
			}
			qemuIO(t, "-f", tt.baseFormat, "-c", "write -P 0x5a 0 4096", base)

			sock := filepath.Join(dir, "q.sock")
			argv := append(append(append([]string(nil), common...), tt.argv(dir, base)...), "-qmp", "unix:"+sock+",server=on,wait=off")
			e := &Exec{Argv: argv, Socket: sock, LogDir: dir}
			t.Cleanup(func() { e.Close() })
			mon, err := e.Start(ctx, vmsnap.LaunchSpec{})
			if err != nil {
				t.Fatalf("first start: %v", err)
			}
			overlay := filepath.Join(imgDir, "revert, o é.qcow2")
			qemutest.Img(t, "create", "-q", "-f", "qcow2", "-F", tt.baseFormat, "-b", base, overlay)
			spec := vmsnap.LaunchSpec{Disks: []vmsnap.LaunchDisk{{Device: tt.disk.Device, Node: tt.disk.Node, File: overlay}}}
			if err := e.CheckLaunch(ctx, spec); err != nil {
				t.Fatalf("CheckLaunch: %v", err)
			}
			mon, err = e.Relaunch(ctx, mon, spec)
			if err != nil {
				t.Fatalf("Relaunch: %v\nargv %q", err, e.Argv)
			}
			t.Cleanup(func() { mon.Close() })
			t.Logf("new argv: %q", e.Argv)

			top := queryDisk(t, mon, tt.block)
			if top.Drv != "qcow2" || top.File != overlay || top.Image.Backing == nil ||
				top.Image.Backing.Filename != base || top.Image.Backing.Format != tt.baseFormat {
				t.Fatalf("the new QEMU's disk: %+v; want the overlay as qcow2 over %s (%s)", top, base, tt.baseFormat)
			}
			if !(tt.disk.Node == "" || top.NodeName == tt.disk.Node) {
				t.Errorf("top node name %q, want %q kept", top.NodeName, tt.disk.Node)
			}
			var out string
			if err := mon.Execute(ctx, "human-monitor-command", map[string]any{"command-line": fmt.Sprintf("qemu-io %s \"read -P 0x5a 0 4096\"", tt.io)}, &out); err != nil || out != "" {
				t.Fatalf("qemu-io: %q, %v", out, err)
			}
			log := waitLog(t, filepath.Join(dir, "qemu.log"), "read 4096/4096")
			if strings.Contains(log, "Pattern verification failed") {
				t.Fatalf("the pattern written before the overlay does not read back:\n%s", log)
			}
			// A restart on the same top changes nothing.
			again, err := e.Plan(ctx, vmsnap.LaunchSpec{Disks: spec.Disks})
			if err != nil || strings.Join(again, "\x00") != strings.Join(e.Argv, "\x00") {
				t.Errorf("Plan on the present disks = %q, %v; want the running argv", again, err)
			}
		})
	}
}

// qemuIO runs qemu-io on an image no QEMU holds.
func qemuIO(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("qemu-io", args...).CombinedOutput(); err != nil {
		t.Fatalf("qemu-io %q: %v\n%s", args, err, out)
	}
}

// blockInfo is the part of a query-block entry the tests check.
type blockInfo struct {
	NodeName string `json:"node-name"`
	Drv      string `json:"drv"`
	File     string `json:"file"`
	Image    struct {
		Backing *struct {
			Filename string `json:"filename"`
			Format   string `json:"format"`
		} `json:"backing-image"`
	} `json:"image"`
}

// queryDisk returns the inserted medium of the disk query-block names
// name (device, qdev id or top node name).
func queryDisk(t *testing.T, mon qmp.Monitor, name string) blockInfo {
	t.Helper()
	var blocks []struct {
		Device   string          `json:"device"`
		QDev     string          `json:"qdev"`
		Inserted json.RawMessage `json:"inserted"`
	}
	if err := mon.Execute(testCtx(t), "query-block", nil, &blocks); err != nil {
		t.Fatal(err)
	}
	for _, b := range blocks {
		var bi blockInfo
		if b.Inserted != nil {
			json.Unmarshal(b.Inserted, &bi)
		}
		if b.Device == name || qemu.QDevName(b.QDev) == name || (bi.NodeName == name && name != "") {
			return bi
		}
	}
	t.Fatalf("query-block has no disk %s: %+v", name, blocks)
	return blockInfo{}
}

// waitLog waits until the file holds want (QEMU prints qemu-io's result
// on its own output) and returns its text.
func waitLog(t *testing.T, path, want string) string {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		b, _ := os.ReadFile(path)
		if strings.Contains(string(b), want) || time.Now().After(deadline) {
			if !strings.Contains(string(b), want) {
				t.Fatalf("%s does not show %q:\n%s", path, want, b)
			}
			return string(b)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
