package qmp_test

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/digitalocean/go-qemu/qemu"
	goqemuqmp "github.com/digitalocean/go-qemu/qmp"

	"github.com/vmsnap/vmsnap/internal/qemutest"
	"github.com/vmsnap/vmsnap/qmp"
)

// TestQEMUGoQEMUDomainOnClient runs go-qemu's qemu.Domain over a Client
// on real QEMU: its decoders read the reply id as a string.
func TestQEMUGoQEMUDomainOnClient(t *testing.T) {
	vm := qemutest.Start(t, qemutest.Options{Disks: 1, Paused: true})
	d, err := qemu.NewDomain(vm.Mon, "vm")
	if err != nil {
		t.Fatalf("qemu.NewDomain: %v", err)
	}
	// d.Close would close vm.Mon, which the rig uses to quit QEMU.
	devs, err := d.BlockDevices()
	if err != nil {
		t.Fatalf("go-qemu BlockDevices on a Client: %v", err)
	}
	var nodes []string
	for _, dev := range devs {
		nodes = append(nodes, dev.Inserted.NodeName)
	}
	if len(devs) != 1 || devs[0].Inserted.NodeName != vm.Disks[0].Node || devs[0].Inserted.File != vm.Disks[0].File {
		t.Errorf("BlockDevices = %d devices on nodes %v, want one on %s (%s)", len(devs), nodes, vm.Disks[0].Node, vm.Disks[0].File)
	}
	st, err := d.Status()
	if err != nil || st != qemu.StatusPreLaunch {
		t.Errorf("go-qemu Status = %v, %v; want prelaunch", st, err)
	}
}

// TestQEMUFromGoQEMUPassesFiles passes descriptors to real QEMU through
// go-qemu's SocketMonitor.RunWithFile: add-fd puts the very file into an
// fd set (checked through /proc), getfd gives it a name closefd knows.
func TestQEMUFromGoQEMUPassesFiles(t *testing.T) {
	p := startQEMU(t)
	dialQEMU(t, p).Close() // wait until the socket is up
	sm, err := goqemuqmp.NewSocketMonitor("unix", p.sock, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if err := sm.Connect(); err != nil {
		t.Fatalf("go-qemu Connect: %v", err)
	}
	m := qmp.FromGoQEMU(sm)
	t.Cleanup(func() { m.Close() })
	fsnd, ok := m.(qmp.FileSender)
	if !ok {
		t.Fatal("FromGoQEMU(SocketMonitor) is not a FileSender")
	}
	f, err := os.Create(t.TempDir() + "/memory.save")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	var added struct {
		FDSetID int `json:"fdset-id"`
		FD      int `json:"fd"`
	}
	if err := fsnd.ExecuteWithFiles(ctx, "add-fd", map[string]any{"fdset-id": 7, "opaque": "vmsnap-test"}, &added, f); err != nil {
		t.Fatalf("add-fd through go-qemu: %v", err)
	}
	link, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%d", p.cmd.Process.Pid, added.FD))
	if err != nil || link != f.Name() {
		t.Errorf("QEMU's fd %d is %q (%v), want %s", added.FD, link, err, f.Name())
	}
	var sets []struct {
		FDSetID int `json:"fdset-id"`
		FDs     []struct {
			FD     int    `json:"fd"`
			Opaque string `json:"opaque"`
		} `json:"fds"`
	}
	if err := m.Execute(ctx, "query-fdsets", nil, &sets); err != nil {
		t.Fatal(err)
	}
	if len(sets) != 1 || sets[0].FDSetID != 7 || len(sets[0].FDs) != 1 || sets[0].FDs[0].FD != added.FD || sets[0].FDs[0].Opaque != "vmsnap-test" {
		t.Errorf("query-fdsets = %+v, want fd set 7 holding fd %d", sets, added.FD)
	}

	if err := fsnd.ExecuteWithFiles(ctx, "getfd", map[string]string{"fdname": "mem"}, nil, f); err != nil {
		t.Fatalf("getfd through go-qemu: %v", err)
	}
	if err := m.Execute(ctx, "closefd", map[string]string{"fdname": "mem"}, nil); err != nil {
		t.Errorf("closefd of the passed fd: %v", err)
	}
	if err := m.Execute(ctx, "closefd", map[string]string{"fdname": "never-passed"}, nil); err == nil {
		t.Errorf("closefd of an unknown name succeeded: the check above proves nothing")
	}
}
