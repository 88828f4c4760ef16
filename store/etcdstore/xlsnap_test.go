package etcdstore

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/vmsnap/vmsnap/internal/qemutest"
	"github.com/vmsnap/vmsnap/qmp"
	"github.com/vmsnap/vmsnap/store"
)

// buildXlsnapEtcd builds cmd/xlsnap-etcd into a temp dir.
func buildXlsnapEtcd(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "xlsnap-etcd")
	if out, err := exec.Command("go", "build", "-o", bin, "./cmd/xlsnap-etcd").CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/xlsnap-etcd: %v\n%s", err, out)
	}
	return bin
}

type xlResult struct {
	code           int
	stdout, stderr string
}

func runXl(t *testing.T, bin string, args ...string) xlResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	var so, se bytes.Buffer
	cmd.Stdout, cmd.Stderr = &so, &se
	err := cmd.Run()
	r := xlResult{stdout: so.String(), stderr: se.String()}
	if ee, ok := err.(*exec.ExitError); ok {
		r.code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("xlsnap-etcd %q: %v", args, err)
	}
	return r
}

func xlOK(t *testing.T, bin string, args ...string) string {
	t.Helper()
	r := runXl(t, bin, args...)
	if r.code != 0 || r.stderr != "" {
		t.Fatalf("xlsnap-etcd %q: exit %d\nstdout: %s\nstderr: %s", args, r.code, r.stdout, r.stderr)
	}
	return r.stdout
}

// socketPeer returns the pid of the process serving the unix socket at
// path (SO_PEERCRED), 0 when nothing answers.
func socketPeer(path string) int {
	c, err := net.DialTimeout("unix", path, time.Second)
	if err != nil {
		return 0
	}
	defer c.Close()
	raw, err := c.(*net.UnixConn).SyscallConn()
	if err != nil {
		return 0
	}
	pid := 0
	raw.Control(func(fd uintptr) {
		if cred, err := syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED); err == nil {
			pid = int(cred.Pid)
		}
	})
	return pid
}

// killPid ends a process the test did not start itself (a QEMU that
// xlsnap relaunched) by pid and waits until it is gone.
func killPid(t *testing.T, pid int) {
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		return
	}
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); {
		if syscall.Kill(pid, 0) == syscall.ESRCH {
			return
		}
		b, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		if i := bytes.LastIndexByte(b, ')'); i > 0 && i+2 < len(b) && (b[i+2] == 'Z' || b[i+2] == 'X') {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Errorf("pid %d did not exit after SIGKILL", pid)
}

// launchFiles lists /tmp's vmsnap-launch-* files.
func launchFiles(t *testing.T) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(os.TempDir(), "vmsnap-launch-*"))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestXlsnapEtcd drives the etcd build of xlsnap (cmd/xlsnap-etcd) against
// a real guest with --store etcd://...: an internal snapshot created,
// listed, reverted and deleted, then an external one whose revert restarts
// QEMU, its memory file under --memory-dir; the records are read back from
// etcd directly, and nothing is written under the file store's default
// root.
func TestXlsnapEtcd(t *testing.T) {
	qemutest.Require(t)
	srv := startEtcd(t)
	bin := buildXlsnapEtcd(t)
	sockDir, err := os.MkdirTemp("", "xe")
	must(t, err)
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	sock := filepath.Join(sockDir, "xl.sock")
	vm := qemutest.Start(t, qemutest.Options{ExtraArgs: []string{"-qmp", "unix:" + sock + ",server=on,wait=off"}})
	memDir := t.TempDir()
	url := "etcd://" + srv.client + "/xlcmd"
	g := []string{"--store", url, "--memory-dir", memDir}
	cmd := func(args ...string) []string { return append(slices.Clone(g), args...) }
	ctx := testContext(t)
	cli := newClient(t, srv)
	tmpBefore := launchFiles(t)

	// Internal: create, list, revert, delete.
	must(t, vm.Mon.Execute(ctx, "stop", nil, nil))
	atSnapshot := guestCounter(t, vm)
	if out := xlOK(t, bin, cmd("snapshot-create", "-n", "s1", "-d", "in etcd", sock)...); out != "s1\n" {
		t.Fatalf("create printed %q", out)
	}
	must(t, vm.Mon.Execute(ctx, "cont", nil, nil))
	xlOK(t, bin, cmd("snapshot-create", "-n", "d1", "--disk-only", sock)...)
	resp, err := cli.Get(ctx, "/xlcmd/"+vm.UUID+"/snapshots/s1")
	must(t, err)
	if len(resp.Kvs) != 1 || !strings.Contains(string(resp.Kvs[0].Value), `description = "in etcd"`) {
		t.Fatalf("etcd key of s1: %q", resp.Kvs)
	}
	var list []struct {
		Name    string `json:"name"`
		Current bool   `json:"current"`
		State   string `json:"state"`
	}
	must(t, json.Unmarshal([]byte(xlOK(t, bin, cmd("snapshot-list", "--json", sock)...)), &list))
	if len(list) != 2 || list[0].Name != "s1" || list[1].Name != "d1" || !list[1].Current || list[1].State != "disk-only" {
		t.Errorf("snapshot-list --json = %+v", list)
	}
	xlOK(t, bin, cmd("snapshot-revert", "-n", "s1", "--paused", sock)...)
	if got := guestCounter(t, vm); got != atSnapshot || guestRunning(t, vm) {
		t.Errorf("after revert: counter %d (want %d), running %v", got, atSnapshot, guestRunning(t, vm))
	}
	if resp, err := cli.Get(ctx, "/xlcmd/"+vm.UUID+"/current"); err != nil || len(resp.Kvs) != 1 || !strings.Contains(string(resp.Kvs[0].Value), `"s1"`) {
		t.Errorf("current in etcd after revert: %v %v", resp, err)
	}
	if out := xlOK(t, bin, cmd("snapshot-delete", "-n", "s1", "--children", sock)...); out != "d1\ns1\n" {
		t.Errorf("delete --children printed %q", out)
	}
	if resp, err := cli.Get(ctx, "/xlcmd/"+vm.UUID+"/snapshots/", clientv3.WithPrefix()); err != nil || len(resp.Kvs) != 0 {
		t.Errorf("records left in etcd after delete: %v %v", resp, err)
	}
	must(t, vm.Mon.Execute(ctx, "cont", nil, nil))

	// External: the memory file goes under --memory-dir; the revert
	// restarts QEMU and its output goes to qemu.log there.
	xlOK(t, bin, cmd("snapshot-create", "-n", "x1", "--external", sock)...)
	memFiles, _ := filepath.Glob(filepath.Join(memDir, vm.UUID, "*.save"))
	if len(memFiles) != 1 {
		t.Errorf("files under --memory-dir after the external create: %q", memFiles)
	}
	cfg := filepath.Join(t.TempDir(), "launch.conf")
	must(t, os.WriteFile(cfg, []byte(strings.Join(vm.Argv, "\n")+"\n"), 0o600))
	oldPid := vm.Pid
	r := runXl(t, bin, cmd("--launch-config", cfg, "snapshot-revert", "-n", "x1", "--running", sock)...)
	newPid := socketPeer(vm.Socket)
	if newPid != 0 && newPid != oldPid {
		t.Cleanup(func() { killPid(t, newPid) })
	}
	if r.code != 0 {
		t.Fatalf("external revert: exit %d\nstdout: %s\nstderr: %s", r.code, r.stdout, r.stderr)
	}
	if newPid == 0 || newPid == oldPid {
		t.Fatalf("no new QEMU after the external revert (peer %d, old %d)", newPid, oldPid)
	}
	if log, err := os.ReadFile(filepath.Join(memDir, vm.UUID, "qemu.log")); err != nil || len(log) == 0 {
		t.Errorf("launch log in the domain's --memory-dir directory: %q, %v", log, err)
	}
	if after := launchFiles(t); len(after) > len(tmpBefore) {
		t.Errorf("launch files left in %s: %q", os.TempDir(), after)
	}
	mon, err := qmp.Dial(ctx, "unix:"+vm.Socket)
	must(t, err)
	t.Cleanup(func() { mon.Close() })
	vm.Mon = mon
	if !advances(t, vm) {
		t.Error("the guest does not run after the --running external revert")
	}
	must(t, json.Unmarshal([]byte(xlOK(t, bin, cmd("snapshot-list", "--json", sock)...)), &list))
	if len(list) != 1 || list[0].Name != "x1" || !list[0].Current {
		t.Errorf("snapshot-list --json after the external revert = %+v", list)
	}
	if out := xlOK(t, bin, cmd("--launch-config", cfg, "snapshot-delete", "-n", "x1", sock)...); out != "x1\n" {
		t.Errorf("delete x1 printed %q", out)
	}
	if names := xlOK(t, bin, cmd("snapshot-list", sock)...); strings.TrimSpace(names) != "Name  Creation time" {
		t.Errorf("list after the deletes:\n%s", names)
	}

	// Usage: TLS files with a directory store are refused, not ignored; a
	// bad URL fails with one line.
	r = runXl(t, bin, "--store", t.TempDir(), "--etcd-cacert", "/nonexistent.pem", "snapshot-list", sock)
	if r.code != 1 || !strings.Contains(r.stderr, "TLS files given") {
		t.Errorf("TLS files with a directory: exit %d, %q", r.code, r.stderr)
	}
	r = runXl(t, bin, "--store", "etcd://"+srv.client+"/x?nosuch=1", "snapshot-list", sock)
	if r.code != 1 || strings.Count(r.stderr, "\n") != 1 || !strings.Contains(r.stderr, "nosuch") {
		t.Errorf("bad URL: exit %d, %q", r.code, r.stderr)
	}
	if _, err := os.Stat(filepath.Join(store.DefaultRoot, vm.UUID)); err == nil {
		t.Errorf("the etcd build wrote under the file store's default root %s", store.DefaultRoot)
	}
}
