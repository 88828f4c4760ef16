package launch

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/vmsnap/vmsnap"
	"github.com/vmsnap/vmsnap/internal/fakeqemu"
	"github.com/vmsnap/vmsnap/internal/qemu"
	"github.com/vmsnap/vmsnap/internal/qemutest"
	"github.com/vmsnap/vmsnap/qmp"
)

func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// TestRelaunchRefusesBeforeQuitting checks that a bad command line or an
// unknown disk is refused before the old QEMU is told to quit.
func TestRelaunchRefusesBeforeQuitting(t *testing.T) {
	srv, err := fakeqemu.Start(fakeqemu.Options{Disks: []fakeqemu.Disk{{Node: "disk0", Device: "dev0", File: "/img/d0.qcow2"}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	mon, err := qmp.Dial(testCtx(t), srv.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mon.Close() })

	good := []string{"qemu-system-x86_64", "-blockdev", "driver=file,filename=/img/d0.qcow2,node-name=f0", "-qmp", "unix:/run/vm.sock,server=on,wait=off"}
	tests := []struct {
		name string
		exec *Exec
		spec vmsnap.LaunchSpec
		want string
	}{
		{name: "empty argv", exec: &Exec{Socket: "/run/vm.sock"}, want: "empty QEMU command line"},
		{name: "no socket", exec: &Exec{Argv: good}, want: "no QMP socket"},
		{name: "socket not served", exec: &Exec{Argv: good, Socket: "/run/other.sock"}, want: "does not serve QMP on /run/other.sock"},
		{name: "disk path not in argv", exec: &Exec{Argv: good, Socket: "/run/vm.sock", DiskFiles: map[string]string{"dev0": "/img/elsewhere.qcow2"}}, want: "does not appear"},
		{
			name: "device not in DiskFiles",
			exec: &Exec{Argv: good, Socket: "/run/vm.sock", DiskFiles: map[string]string{"dev0": "/img/d0.qcow2"}},
			spec: vmsnap.LaunchSpec{Disks: []vmsnap.LaunchDisk{{Device: "dev1", Node: "disk1", File: "/img/o1.qcow2"}}},
			want: "disk dev1: the QEMU command line declares no -drive, -blockdev or -device for it",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.exec.Relaunch(testCtx(t), mon, tt.spec)
			if got != nil || !errors.Is(err, ErrLaunch) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Relaunch = %v, %v; want ErrLaunch containing %q", got, err, tt.want)
			}
			if slices.Contains(srv.Commands(), "quit") {
				t.Fatalf("quit was sent although the relaunch was refused: %q", srv.Commands())
			}
			if tt.exec.Process() != nil {
				t.Fatal("a process was started")
			}
		})
	}
	// The monitor still works: nothing closed it.
	if _, err := qmp.QueryStatus(testCtx(t), mon); err != nil {
		t.Fatalf("old monitor after refusals: %v", err)
	}
}

// TestRelaunchReportsEarlyExit checks that a QEMU that dies before its
// monitor answers is reported with its own message.
func TestRelaunchReportsEarlyExit(t *testing.T) {
	qemutest.Require(t)
	sock := filepath.Join(t.TempDir(), "q.sock")
	e := &Exec{
		Argv:   []string{"qemu-system-x86_64", "-machine", "pc,accel=tcg", "-nodefaults", "-display", "none", "-qmp", "unix:" + sock + ",server=on,wait=off"},
		Socket: sock,
	}
	t.Cleanup(func() { e.Close() })
	_, err := e.Relaunch(testCtx(t), nil, vmsnap.LaunchSpec{ExtraArgs: []string{"-no-such-option"}})
	if !errors.Is(err, ErrLaunch) || !strings.Contains(err.Error(), "no-such-option") || !strings.Contains(err.Error(), "exited") {
		t.Fatalf("Relaunch with a bad option: %v; want an exit error quoting QEMU's message", err)
	}
}

// TestRelaunchRealQEMU relaunches the counter guest paused with one disk
// moved onto a new overlay, with the old process known by pid and by
// socket only.
func TestRelaunchRealQEMU(t *testing.T) {
	for _, byPid := range []bool{true, false} {
		name := "wait for socket"
		if byPid {
			name = "wait for pid"
		}
		t.Run(name, func(t *testing.T) {
			ctx := testCtx(t)
			vm := qemutest.Start(t, qemutest.Options{MemoryMiB: 64})
			files, err := DiskFiles(ctx, vm.Mon, vm.Argv)
			if err != nil {
				t.Fatal(err)
			}
			want := map[string]string{}
			for _, d := range vm.Disks {
				want[d.Device] = d.File
			}
			if diff := cmp.Diff(want, files); diff != "" {
				t.Fatalf("DiskFiles (-want +got):\n%s", diff)
			}
			overlay := filepath.Join(t.TempDir(), "dev1,overlay.qcow2") // a comma: QEMU's ",," escaping
			qemutest.Img(t, "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", vm.Disks[1].File, overlay)

			e := &Exec{Argv: vm.Argv, Socket: vm.Socket, DiskFiles: files}
			if byPid {
				e.Pid = vm.Pid
			}
			t.Cleanup(func() {
				if err := e.Close(); err != nil {
					t.Error(err)
				}
			})
			oldPid := vm.Pid
			start := time.Now()
			mon, err := e.Relaunch(ctx, vm.Mon, vmsnap.LaunchSpec{
				ExtraArgs: []string{"-S"},
				Disks:     []vmsnap.LaunchDisk{{Device: vm.Disks[1].Device, Node: vm.Disks[1].Node, File: overlay}},
			})
			if err != nil {
				t.Fatalf("Relaunch: %v", err)
			}
			t.Cleanup(func() { mon.Close() })
			t.Logf("relaunch took %v", time.Since(start).Round(time.Millisecond))
			if err := syscall.Kill(oldPid, 0); !errors.Is(err, syscall.ESRCH) && !processGone(oldPid) {
				t.Errorf("old QEMU pid %d still runs", oldPid)
			}
			p := e.Process()
			if p == nil || p.Pid == oldPid || e.Pid != p.Pid {
				t.Fatalf("Process() = %v, Pid %d; want a new process", p, e.Pid)
			}
			st, err := qmp.QueryStatus(ctx, mon)
			if err != nil {
				t.Fatal(err)
			}
			if st.State != qmp.RunStatePrelaunch || st.Running {
				t.Errorf("status %+v, want prelaunch (started with -S)", st)
			}
			var blocks []struct {
				QDev     string `json:"qdev"`
				Inserted struct {
					File string `json:"file"`
				} `json:"inserted"`
			}
			if err := mon.Execute(ctx, "query-block", nil, &blocks); err != nil {
				t.Fatal(err)
			}
			gotFiles := map[string]string{}
			for _, b := range blocks {
				gotFiles[qemu.QDevName(b.QDev)] = b.Inserted.File
			}
			wantFiles := map[string]string{vm.Disks[0].Device: vm.Disks[0].File, vm.Disks[1].Device: overlay}
			if diff := cmp.Diff(wantFiles, gotFiles); diff != "" {
				t.Errorf("the new QEMU's disks (-want +got):\n%s", diff)
			}
			if e.DiskFiles[vm.Disks[1].Device] != overlay || slices.Contains(e.Argv, "-S") {
				t.Errorf("Exec not updated: DiskFiles %v, Argv %q", e.DiskFiles, e.Argv)
			}
			if err := e.Check(); err != nil {
				t.Errorf("Check after relaunch: %v", err)
			}
			if err := e.Close(); err != nil {
				t.Fatal(err)
			}
			if _, err := os.Stat(fmt.Sprintf("/proc/%d", p.Pid)); err == nil && !processGone(p.Pid) {
				t.Errorf("pid %d survives Close", p.Pid)
			}
		})
	}
}
