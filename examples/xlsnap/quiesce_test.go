package main

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/vmsnap/vmsnap/internal/qemutest"
	"github.com/vmsnap/vmsnap/qga/qgatest"
	"github.com/vmsnap/vmsnap/qmp"
)

// nodeSnapshots returns the internal snapshots QEMU reports for the block
// node node.
func nodeSnapshots(ctx context.Context, mon qmp.Monitor, node string) ([]string, error) {
	var nodes []struct {
		NodeName string `json:"node-name"`
		Image    struct {
			Snapshots []struct {
				Name string `json:"name"`
			} `json:"snapshots"`
		} `json:"image"`
	}
	if err := mon.Execute(ctx, "query-named-block-nodes", nil, &nodes); err != nil {
		return nil, err
	}
	names := []string{}
	for _, n := range nodes {
		if n.NodeName == node {
			for _, s := range n.Image.Snapshots {
				names = append(names, s.Name)
			}
		}
	}
	return names, nil
}

// TestXlsnapQuiesceRealQEMU takes quiesced disk-only snapshots of the
// counter guest. The boot-sector guest runs no agent, so a fake agent
// stands in for its channel's socket; at each freeze and thaw the fake
// records the guest's run state and the snapshots QEMU reports, through
// the rig's own monitor, to check the order freeze, snapshot, thaw. The
// guest's real agent channel (a virtio-serial port nobody serves) shows
// what an absent agent looks like.
func TestXlsnapQuiesceRealQEMU(t *testing.T) {
	qemutest.Require(t)
	bin := buildXlsnap(t)
	dir := socketDir(t)
	sock := filepath.Join(dir, "xl.sock")
	chardev := filepath.Join(dir, "qga.sock")
	vm := qemutest.Start(t, qemutest.Options{Disks: 1, ExtraArgs: []string{
		"-qmp", "unix:" + sock + ",server=on,wait=off",
		"-chardev", "socket,path=" + chardev + ",server=on,wait=off,id=qga0",
		"-device", "virtio-serial",
		"-device", "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
	}})
	node := vm.Disks[0].Node

	type seen struct {
		command   string
		running   bool
		snapshots []string
	}
	var mu sync.Mutex
	var log []seen
	var hookErr error
	fake, err := qgatest.Start(filepath.Join(dir, "fake.sock"), qgatest.Options{
		Filesystems: 2,
		Stale:       []byte("{\"return\": 2}\n{\"return\": \"fro"),
		OnCommand: func(command string) {
			if command != "guest-fsfreeze-freeze" && command != "guest-fsfreeze-thaw" {
				return
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			st, err := qmp.QueryStatus(ctx, vm.Mon)
			snaps, err2 := nodeSnapshots(ctx, vm.Mon, node)
			mu.Lock()
			defer mu.Unlock()
			if err != nil || err2 != nil {
				hookErr = fmt.Errorf("at %s: %v %v", command, err, err2)
			}
			log = append(log, seen{command, st.Running, snaps})
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fake.Close() })
	st := filepath.Join(t.TempDir(), "store")
	g := []string{"--store", st}
	cmd := func(args ...string) []string { return append(append([]string{}, g...), args...) }

	// --quiesce without --agent: refused before anything happens.
	msg := fails(t, bin, 2, []string{"--quiesce", "--agent SOCKET"}, cmd("snapshot-create", "-n", "q0", "--quiesce", "--disk-only", sock)...)
	t.Logf("without --agent: %s", strings.TrimSpace(msg))
	if tags := qemutest.ImgSnapshots(t, vm.Disks[0].File); slices.Contains(tags, "q0") {
		t.Errorf("refused snapshot q0 is in the image: %q", tags)
	}

	// With the fake agent: one freeze before the snapshot, one thaw after.
	start := time.Now()
	out := ok(t, bin, cmd("--agent", fake.Path(), "snapshot-create", "-n", "q1", "--quiesce", "--disk-only", sock)...)
	t.Logf("quiesced disk-only snapshot: %v", time.Since(start).Round(time.Millisecond))
	if out != "q1\n" {
		t.Errorf("create printed %q, want q1", out)
	}
	if diff := cmp.Diff([]string{"guest-sync-delimited", "guest-fsfreeze-freeze", "guest-fsfreeze-thaw"}, fake.Calls()); diff != "" {
		t.Errorf("agent commands (-want +got):\n%s", diff)
	}
	if fake.Frozen() {
		t.Error("the guest's filesystems are still frozen")
	}
	mu.Lock()
	gotLog, gotErr := slices.Clone(log), hookErr
	mu.Unlock()
	if gotErr != nil {
		t.Fatal(gotErr)
	}
	wantLog := []seen{
		{command: "guest-fsfreeze-freeze", running: true, snapshots: []string{}},
		{command: "guest-fsfreeze-thaw", running: true, snapshots: []string{"q1"}},
	}
	if diff := cmp.Diff(wantLog, gotLog, cmp.AllowUnexported(seen{})); diff != "" {
		t.Errorf("what the agent saw at freeze and thaw (-want +got):\n%s", diff)
	}
	if tags := qemutest.ImgSnapshots(t, vm.Disks[0].File); !slices.Contains(tags, "q1") {
		t.Errorf("q1 is not in the image: %q", tags)
	}
	if s := byName(checkJSON(t, ok(t, bin, cmd("snapshot-list", "--json", sock)...)), "q1"); s == nil || s["state"] != "disk-only" {
		t.Errorf("q1 listed as %v", s)
	}

	// The agent refuses the freeze: no snapshot, and the guest is thawed
	// anyway (the agent may have frozen some filesystems).
	fake.Next("guest-fsfreeze-freeze", qgatest.Reply{Error: &qgatest.ErrorReply{Class: "GenericError", Desc: "failed to freeze /srv: Device or resource busy"}})
	msg = fails(t, bin, 1, []string{`"q2"`, "failed to freeze /srv"}, cmd("--agent", fake.Path(), "snapshot-create", "-n", "q2", "--quiesce", "--disk-only", sock)...)
	t.Logf("freeze refused: %s", strings.TrimSpace(msg))
	if tags := qemutest.ImgSnapshots(t, vm.Disks[0].File); slices.Contains(tags, "q2") {
		t.Errorf("q2 is in the image after the freeze failed: %q", tags)
	}
	if got := fake.Calls()[3:]; !slices.Equal(got, []string{"guest-sync-delimited", "guest-fsfreeze-freeze", "guest-fsfreeze-thaw"}) {
		t.Errorf("agent commands after a failed freeze: %q", got)
	}
	if fake.Frozen() {
		t.Error("frozen after a failed freeze")
	}

	// The guest's real agent channel: QEMU accepts the connection, but no
	// agent runs in this guest to answer.
	start = time.Now()
	msg = fails(t, bin, 1, []string{`"q3"`, chardev, "is the agent running in the guest"}, cmd("--timeout", "500ms", "--agent", chardev, "snapshot-create", "-n", "q3", "--quiesce", "--disk-only", sock)...)
	t.Logf("no agent in the guest (%v): %s", time.Since(start).Round(time.Millisecond), strings.TrimSpace(msg))
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("with no agent in the guest the command took %v (--timeout 500ms)", took)
	}
	if tags := qemutest.ImgSnapshots(t, vm.Disks[0].File); slices.Contains(tags, "q3") {
		t.Errorf("q3 is in the image with no agent: %q", tags)
	}
	if s := status(t, vm); !s.Running {
		t.Errorf("guest %s after the quiesced snapshots", s.State)
	}
}
