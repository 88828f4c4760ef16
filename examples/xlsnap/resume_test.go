package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vmsnap/vmsnap/internal/qemutest"
	"github.com/vmsnap/vmsnap/qmp"
)

// launchTempFiles lists the launch logs a launcher would leave in the
// system's temporary directory.
func launchTempFiles(t *testing.T) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(os.TempDir(), "vmsnap-launch-*"))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// waitFor polls cond every 10ms until it holds or d has passed.
func waitFor(d time.Duration, cond func() bool) bool {
	for deadline := time.Now().Add(d); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if cond() {
			return true
		}
	}
	return cond()
}

// TestXlsnapFinishesInterruptedRevert kills xlsnap in the middle of an
// external revert, after the old QEMU stopped and before the new one
// runs: the launch command is a wrapper that waits while a hold file
// exists, so xlsnap is stuck starting QEMU when it is killed. The next
// command, given --uuid and the launch command, finds no QEMU on the
// socket, finishes the revert (the new QEMU runs on the snapshot's disks
// with its memory loaded, paused as the revert asked) and lists. With
// nothing pending, a command against a domain whose QEMU is down fails
// with the connection error and starts nothing.
func TestXlsnapFinishesInterruptedRevert(t *testing.T) {
	qemutest.Require(t)
	bin := buildXlsnap(t)
	sock := filepath.Join(socketDir(t), "xl.sock")
	vm := qemutest.Start(t, qemutest.Options{ExtraArgs: []string{"-qmp", "unix:" + sock + ",server=on,wait=off"}})
	st := filepath.Join(t.TempDir(), "store")
	tmpBefore := launchTempFiles(t)
	g := []string{"--store", st}
	cmd := func(args ...string) []string { return append(slices.Clone(g), args...) }

	cPre := counter(t, vm)
	ok(t, bin, cmd("snapshot-create", "-n", "ext1", "--external", sock)...)
	cSnap := counter(t, vm)
	snap := byName(checkJSON(t, ok(t, bin, cmd("snapshot-list", "--json", sock, "ext1")...)), "ext1")
	if snap == nil {
		t.Fatal("--json does not list ext1")
	}
	if !waitFor(5*time.Second, func() bool { return counter(t, vm) > cSnap }) {
		t.Fatal("the guest does not run after the external snapshot")
	}

	// The wrapper: it writes its pid, waits while hold exists, then
	// becomes QEMU.
	dir := t.TempDir()
	hold, pidFile := filepath.Join(dir, "hold"), filepath.Join(dir, "wrapper.pid")
	wrapper := filepath.Join(dir, "qemu-held")
	script := "#!/bin/sh\necho $$ > '" + pidFile + "'\nwhile [ -e '" + hold + "' ]; do sleep 0.05; done\nexec " + vm.Argv[0] + " \"$@\"\n"
	if err := os.WriteFile(wrapper, []byte(script), 0o700); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "launch.conf")
	argv := append([]string{wrapper}, vm.Argv[1:]...)
	if err := os.WriteFile(cfg, []byte(strings.Join(argv, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(hold, nil, 0o600); err != nil {
		t.Fatal(err)
	}

	// The revert, killed while it waits for the new QEMU.
	revert := exec.Command(bin, cmd("--launch-config", cfg, "snapshot-revert", "-n", "ext1", "--paused", sock)...)
	var revertOut strings.Builder
	revert.Stdout, revert.Stderr = &revertOut, &revertOut
	if err := revert.Start(); err != nil {
		t.Fatal(err)
	}
	reaped := false
	t.Cleanup(func() {
		if !reaped {
			revert.Process.Kill()
			revert.Wait()
		}
	})
	wrapperPid := 0
	if !waitFor(time.Minute, func() bool {
		b, err := os.ReadFile(pidFile)
		wrapperPid, _ = strconv.Atoi(strings.TrimSpace(string(b)))
		return err == nil && wrapperPid > 0
	}) {
		t.Fatalf("the revert never started the launch command:\n%s", revertOut.String())
	}
	t.Cleanup(func() { killAndWait(t, wrapperPid) })
	select {
	case <-vm.Exited():
	case <-time.After(10 * time.Second):
		t.Fatal("the old QEMU still runs while the revert starts the new one")
	}
	if err := revert.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	revert.Wait()
	reaped = true
	killAndWait(t, wrapperPid)
	if err := os.Remove(hold); err != nil {
		t.Fatal(err)
	}
	if pid := peerPid(vm.Socket); pid != 0 {
		t.Fatalf("pid %d serves the domain's socket after the kill", pid)
	}

	// Without --uuid the down domain is not bound: the connection error.
	fails(t, bin, 1, []string{"connect to the monitor"}, cmd("--launch-config", cfg, "snapshot-list", sock)...)

	// The next command finishes the revert, then lists.
	start := time.Now()
	r := xl(t, bin, cmd("--uuid", vm.UUID, "--launch-config", cfg, "snapshot-list", "--json", sock)...)
	newPid := peerPid(vm.Socket)
	if newPid != 0 && newPid != vm.Pid {
		t.Cleanup(func() { killAndWait(t, newPid) })
	}
	if r.code != 0 || r.stderr != "" {
		t.Fatalf("snapshot-list after the killed revert: exit %d\nstdout: %s\nstderr: %s", r.code, r.stdout, r.stderr)
	}
	t.Logf("snapshot-list finished the interrupted revert in %v", time.Since(start).Round(time.Millisecond))
	if newPid == 0 || newPid == vm.Pid {
		t.Fatalf("no new QEMU serves %s (peer pid %d, old pid %d)", vm.Socket, newPid, vm.Pid)
	}
	if s := byName(checkJSON(t, r.stdout), "ext1"); s == nil || s["current"] != true || len(s["problems"].([]any)) != 0 {
		t.Errorf("ext1 after the finished revert: %v", s)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	mon, err := qmp.Dial(ctx, "unix:"+vm.Socket)
	if err != nil {
		t.Fatal(err)
	}
	defer mon.Close()
	vm.Mon = mon
	if c := counter(t, vm); c < cPre || c > cSnap {
		t.Errorf("after the finished revert the counter is %d; the snapshot was taken between %d and %d", c, cPre, cSnap)
	}
	if s := status(t, vm); s.Running || s.State != qmp.RunStatePaused {
		t.Errorf("after the finished --paused revert: %+v", s)
	}
	top := topImages(t, vm)
	for _, d := range snap["disks"].([]any) {
		dm := d.(map[string]any)
		dev, file, overlay := dm["device"].(string), dm["file"].(string), dm["overlay"].(string)
		img, has := top[dev]
		switch {
		case !has:
			t.Errorf("after the revert QEMU has no disk %s", dev)
		case img.file == file || img.file == overlay:
			t.Errorf("after the revert %s runs on %s, not on a new overlay", dev, img.file)
		case img.backing != file:
			t.Errorf("after the revert %s runs on %s backed by %q, want the snapshot's image %s", dev, img.file, img.backing, file)
		}
	}
	if log, err := os.ReadFile(filepath.Join(st, vm.UUID, "qemu.log")); err != nil || !strings.Contains(string(log), wrapper) {
		t.Errorf("the launch log in the domain's directory: %v\n%s", err, log)
	}
	if after := launchTempFiles(t); len(after) > len(tmpBefore) {
		t.Errorf("launch files left in %s: %q (before: %q)", os.TempDir(), after, tmpBefore)
	}

	// Nothing pending: with QEMU down the connection error stands and no
	// QEMU is started.
	mon.Close()
	killAndWait(t, newPid)
	fails(t, bin, 1, []string{"connect to the monitor"}, cmd("--uuid", vm.UUID, "--launch-config", cfg, "snapshot-list", sock)...)
	if pid := peerPid(vm.Socket); pid != 0 {
		killAndWait(t, pid)
		t.Errorf("pid %d was started for a domain with nothing pending", pid)
	}
}
