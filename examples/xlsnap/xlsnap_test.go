package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vmsnap/vmsnap/internal/qemutest"
	"github.com/vmsnap/vmsnap/qmp"
	"github.com/vmsnap/vmsnap/store"
)

// binDir holds the xlsnap binary built once for the package's tests.
var binDir string

func TestMain(m *testing.M) {
	d, err := os.MkdirTemp("", "xlsnap-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = d
	code := m.Run()
	os.RemoveAll(d)
	os.Exit(code)
}

var buildOnce struct {
	sync.Once
	out []byte
	err error
}

// buildXlsnap builds the program (once per test binary) with go build.
func buildXlsnap(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(binDir, "xlsnap")
	buildOnce.Do(func() {
		buildOnce.out, buildOnce.err = exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	})
	if buildOnce.err != nil {
		t.Fatalf("go build: %v\n%s", buildOnce.err, buildOnce.out)
	}
	return bin
}

// socketDir returns a short directory for unix sockets (108-byte limit).
func socketDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("", "xl")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

type result struct {
	code           int
	stdout, stderr string
}

// xl runs the built program.
func xl(t *testing.T, bin string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	var so, se bytes.Buffer
	cmd.Stdout, cmd.Stderr = &so, &se
	err := cmd.Run()
	r := result{stdout: so.String(), stderr: se.String()}
	if ee, ok := err.(*exec.ExitError); ok {
		r.code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("xlsnap %q: %v", args, err)
	}
	return r
}

// ok runs the program and requires exit status 0 and a quiet stderr.
func ok(t *testing.T, bin string, args ...string) string {
	t.Helper()
	r := xl(t, bin, args...)
	if r.code != 0 || r.stderr != "" {
		t.Fatalf("xlsnap %q: exit %d\nstdout: %s\nstderr: %s", args, r.code, r.stdout, r.stderr)
	}
	return r.stdout
}

// fails runs the program and requires the exit status code and, for
// status 1, exactly one line on stderr containing every part of want.
func fails(t *testing.T, bin string, code int, want []string, args ...string) string {
	t.Helper()
	r := xl(t, bin, args...)
	if r.code != code {
		t.Fatalf("xlsnap %q: exit %d, want %d\nstdout: %s\nstderr: %s", args, r.code, code, r.stdout, r.stderr)
	}
	if code == 1 && strings.Count(r.stderr, "\n") != 1 {
		t.Errorf("xlsnap %q: stderr is not one line:\n%s", args, r.stderr)
	}
	for _, w := range want {
		if !strings.Contains(r.stderr, w) {
			t.Errorf("xlsnap %q: stderr %q does not contain %q", args, r.stderr, w)
		}
	}
	return r.stderr
}

func counter(t *testing.T, vm *qemutest.VM) uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := vm.Counter(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func status(t *testing.T, vm *qemutest.VM) qmp.Status {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := qmp.QueryStatus(ctx, vm.Mon)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// listNames returns the names of a plain listing, header checked.
func listNames(t *testing.T, out string) []string {
	t.Helper()
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	if len(lines) == 0 || !regexp.MustCompile(`^Name\s+Creation time\s*$`).MatchString(lines[0]) {
		t.Fatalf("plain listing has no header:\n%s", out)
	}
	row := regexp.MustCompile(`^(\S+)\s+(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [+-]\d{4})\s*$`)
	var names []string
	for _, l := range lines[1:] {
		m := row.FindStringSubmatch(l)
		if m == nil {
			t.Fatalf("plain listing row %q is not NAME TIME", l)
		}
		names = append(names, m[1])
	}
	return names
}

// checkJSON decodes a --json listing strictly: exactly the documented
// keys, each of its documented type.
func checkJSON(t *testing.T, out string) []map[string]any {
	t.Helper()
	var arr []map[string]any
	if err := json.Unmarshal([]byte(out), &arr); err != nil {
		t.Fatalf("--json output is not a JSON array of objects: %v\n%s", err, out)
	}
	type kind int
	const (
		str kind = iota
		boolean
		number
		object
		array
	)
	snapKeys := map[string]kind{"name": str, "description": str, "creation_time": str, "state": str, "parent": str,
		"current": boolean, "memory": object, "disks": array, "problems": array, "downtime_ms": number}
	memKeys := map[string]kind{"kind": str, "node": str, "file": str}
	diskKeys := map[string]kind{"device": str, "file": str, "kind": str, "id": str, "name": str, "overlay": str,
		"vm_state_size": number, "date": str, "vm_clock": str}
	check := func(where string, obj map[string]any, keys map[string]kind) {
		var got, want []string
		for k := range obj {
			got = append(got, k)
		}
		for k := range keys {
			want = append(want, k)
		}
		sort.Strings(got)
		sort.Strings(want)
		if !slices.Equal(got, want) {
			t.Errorf("%s: keys %v, want %v", where, got, want)
		}
		for k, kd := range keys {
			v := obj[k]
			okType := false
			switch kd {
			case str:
				_, okType = v.(string)
			case boolean:
				_, okType = v.(bool)
			case number:
				_, okType = v.(float64)
			case object:
				_, okType = v.(map[string]any)
			case array:
				_, okType = v.([]any)
			}
			if !okType {
				t.Errorf("%s: %s = %#v has the wrong type", where, k, v)
			}
		}
	}
	for _, s := range arr {
		where := fmt.Sprintf("snapshot %v", s["name"])
		check(where, s, snapKeys)
		if _, err := time.Parse(time.RFC3339, s["creation_time"].(string)); err != nil {
			t.Errorf("%s: creation_time: %v", where, err)
		}
		if m, ok := s["memory"].(map[string]any); ok {
			check(where+" memory", m, memKeys)
		}
		disks, _ := s["disks"].([]any)
		if len(disks) == 0 {
			t.Errorf("%s: no disks", where)
		}
		for i, d := range disks {
			dm, ok := d.(map[string]any)
			if !ok {
				t.Errorf("%s: disk %d is %T", where, i, d)
				continue
			}
			check(fmt.Sprintf("%s disk %d", where, i), dm, diskKeys)
			if ds, _ := dm["date"].(string); ds != "" {
				if _, err := time.Parse(time.RFC3339, ds); err != nil {
					t.Errorf("%s disk %d: date: %v", where, i, err)
				}
			}
			if vc, _ := dm["vm_clock"].(string); !regexp.MustCompile(`^\d\d+:\d\d:\d\d\.\d{3}$`).MatchString(vc) {
				t.Errorf("%s disk %d: vm_clock %q is not HH:MM:SS.mmm", where, i, vc)
			}
			if n, _ := dm["vm_state_size"].(float64); n != float64(uint64(n)) {
				t.Errorf("%s disk %d: vm_state_size %v is not a whole number", where, i, n)
			}
		}
	}
	return arr
}

func byName(arr []map[string]any, name string) map[string]any {
	for _, s := range arr {
		if s["name"] == name {
			return s
		}
	}
	return nil
}

// TestXlsnapRealQEMU builds xlsnap and drives every command against the
// counter guest, through a QMP socket of its own (QEMU serves several
// -qmp monitors; the rig keeps its own for reading the counter).
func TestXlsnapRealQEMU(t *testing.T) {
	qemutest.Require(t)
	bin := buildXlsnap(t)
	sock := filepath.Join(socketDir(t), "xl.sock")
	vm := qemutest.Start(t, qemutest.Options{ExtraArgs: []string{"-qmp", "unix:" + sock + ",server=on,wait=off"}})
	st := filepath.Join(t.TempDir(), "store")
	g := []string{"--store", st}
	cmd := func(args ...string) []string { return append(append([]string{}, g...), args...) }
	timed := func(what string, f func()) {
		start := time.Now()
		f()
		t.Logf("%s: %v", what, time.Since(start).Round(time.Millisecond))
	}

	// snapshot-create without -n: the name is the epoch seconds, printed.
	before := time.Now().Unix()
	var out string
	timed("create (default name)", func() { out = ok(t, bin, cmd("snapshot-create", sock)...) })
	after := time.Now().Unix()
	defName := strings.TrimSpace(out)
	if _, err := os.Stat(filepath.Join(st, vm.UUID, store.RecordFileName(defName))); err != nil {
		t.Fatalf("the record is not in the --store directory: %v", err)
	}
	if n, err := strconv.ParseInt(defName, 10, 64); err != nil || n < before || n > after {
		t.Fatalf("default name %q is not the creation time in epoch seconds (%d..%d)", defName, before, after)
	}

	// A full snapshot "base" with a description; the counter goes on.
	cBase := counter(t, vm)
	timed("create base", func() {
		out = ok(t, bin, cmd("snapshot-create", "-n", "base", "-d", "first, with \"quotes\"", sock)...)
	})
	if strings.TrimSpace(out) != "base" {
		t.Fatalf("create printed %q, want base", out)
	}
	if st := status(t, vm); !st.Running {
		t.Fatalf("guest %s after the snapshot of a running guest", st.State)
	}
	// The vCPU thread may not have been scheduled yet on a loaded machine:
	// give the counter a moment to move.
	cAfterBase := counter(t, vm)
	for deadline := time.Now().Add(2 * time.Second); cAfterBase <= cBase && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
		cAfterBase = counter(t, vm)
	}
	if cAfterBase <= cBase {
		t.Fatalf("counter %d then %d: the guest does not run after the snapshot", cBase, cAfterBase)
	}
	// A disk-only snapshot, options after DOMAIN, --n spelling.
	timed("create disk-only", func() { ok(t, bin, cmd("snapshot-create", sock, "--n", "disks", "--disk-only")...) })
	timed("create child", func() { ok(t, bin, cmd("snapshot-create", "-n", "child", sock)...) })
	for _, d := range vm.Disks {
		tags := qemutest.ImgSnapshots(t, d.File)
		for _, want := range []string{defName, "base", "disks", "child"} {
			if !slices.Contains(tags, want) {
				t.Errorf("qemu-img snapshot -l %s = %q, missing %q", d.File, tags, want)
			}
		}
	}

	// External and live snapshots: QEMU 7.2 on Linux takes both, so each
	// must succeed, and what it made is checked from outside xlsnap (QEMU's
	// block graph, qemu-img, the memory file) before it is deleted again.
	for _, f := range []string{"--external", "--live"} {
		name := "x" + strings.TrimPrefix(f, "--")
		start := time.Now()
		out := ok(t, bin, cmd("snapshot-create", "-n", name, f, sock)...)
		wall := time.Since(start)
		t.Logf("create %s: %v", f, wall.Round(time.Millisecond))
		if strings.TrimSpace(out) != name {
			t.Fatalf("create %s printed %q, want %s", f, out, name)
		}
		s := byName(checkJSON(t, ok(t, bin, cmd("snapshot-list", "--json", sock, name)...)), name)
		if s == nil {
			t.Fatalf("--json does not list %s", name)
		}
		checkExternal(t, vm, s, wall)
		if st := status(t, vm); !st.Running {
			t.Errorf("guest %s after create %s of a running guest", st.State, f)
		}
		ok(t, bin, cmd("snapshot-delete", "-n", name, sock)...)
	}

	// snapshot-list, plain.
	names := listNames(t, ok(t, bin, cmd("snapshot-list", sock)...))
	if want := []string{defName, "base", "disks", "child"}; !slices.Equal(names, want) {
		t.Errorf("snapshot-list names %q, want %q (oldest first)", names, want)
	}
	if got := listNames(t, ok(t, bin, cmd("snapshot-list", sock, "base")...)); !slices.Equal(got, []string{"base"}) {
		t.Errorf("snapshot-list DOMAIN base = %q", got)
	}
	// --long.
	long := ok(t, bin, cmd("snapshot-list", "--long", sock, "base")...)
	for _, want := range []string{"name:", "base", `first, with "quotes"`, "state:", "running", "memory:", "internal node=disk0", "current:", "false", "disk dev0: kind=internal", "disk dev1: kind=internal", "vm_state_size="} {
		if !strings.Contains(long, want) {
			t.Errorf("--long output lacks %q:\n%s", want, long)
		}
	}
	// --tree: a chain defName -> base -> disks -> child, child current.
	tree := ok(t, bin, cmd("snapshot-list", "--tree", sock)...)
	treeRe := regexp.MustCompile(`(?m)^` + defName + `  .*\n└─ base  .*\n   └─ disks  .*\n      └─ child  .* \*\n$`)
	if !treeRe.MatchString(tree) {
		t.Errorf("--tree output:\n%s", tree)
	}
	// --json.
	arr := checkJSON(t, ok(t, bin, cmd("snapshot-list", "--json", sock)...))
	if len(arr) != 4 {
		t.Fatalf("--json lists %d snapshots, want 4", len(arr))
	}
	wantFields := map[string]map[string]any{
		"base":  {"state": "running", "parent": defName, "current": false, "description": `first, with "quotes"`},
		"disks": {"state": "disk-only", "parent": "base", "current": false},
		"child": {"state": "running", "parent": "disks", "current": true},
	}
	for name, fields := range wantFields {
		s := byName(arr, name)
		if s == nil {
			t.Fatalf("--json lacks %s", name)
		}
		for k, v := range fields {
			if !reflect.DeepEqual(s[k], v) {
				t.Errorf("--json %s.%s = %#v, want %#v", name, k, s[k], v)
			}
		}
	}
	if mem := byName(arr, "disks")["memory"].(map[string]any); mem["kind"] != "none" {
		t.Errorf("disk-only memory %v", mem)
	}
	if mem := byName(arr, "base")["memory"].(map[string]any); mem["kind"] != "internal" || mem["node"] != "disk0" {
		t.Errorf("base memory %v", mem)
	}
	var vmstate float64
	for _, d := range byName(arr, "base")["disks"].([]any) {
		vmstate += d.(map[string]any)["vm_state_size"].(float64)
	}
	if vmstate == 0 {
		t.Errorf("base: no disk reports a vm_state_size")
	}
	one := checkJSON(t, ok(t, bin, cmd("snapshot-list", "--json", sock, "disks")...))
	if len(one) != 1 || one[0]["name"] != "disks" {
		t.Errorf("--json DOMAIN disks = %v", one)
	}

	// snapshot-revert --paused to base: the counter goes back and stays.
	cBefore := counter(t, vm)
	timed("revert base --paused", func() { ok(t, bin, cmd("snapshot-revert", "-n", "base", "--paused", sock)...) })
	c1 := counter(t, vm)
	if c1 >= cBefore || c1 < cBase {
		t.Errorf("after revert to base: counter %d; before revert %d, when base was taken %d..%d", c1, cBefore, cBase, cAfterBase)
	}
	if s := status(t, vm); s.Running || s.State != qmp.RunStatePaused {
		t.Errorf("after --paused revert: %+v", s)
	}
	time.Sleep(50 * time.Millisecond)
	if c2 := counter(t, vm); c2 != c1 {
		t.Errorf("paused guest's counter moved from %d to %d", c1, c2)
	}
	if cur := byName(checkJSON(t, ok(t, bin, cmd("snapshot-list", "--json", sock)...)), "base"); cur["current"] != true {
		t.Errorf("base is not current after revert")
	}
	// --running to child: the guest runs.
	timed("revert child --running", func() { ok(t, bin, cmd("snapshot-revert", "--running", "-n", "child", sock)...) })
	if s := status(t, vm); !s.Running {
		t.Errorf("after --running revert: %+v", s)
	}
	c3 := counter(t, vm)
	time.Sleep(20 * time.Millisecond)
	if c4 := counter(t, vm); c4 <= c3 {
		t.Errorf("running guest's counter did not move: %d then %d", c3, c4)
	}

	// Usage errors: status 2.
	for _, args := range [][]string{
		{"snapshot-revert", sock},
		{"snapshot-revert", "-n", "base", "--running", "--paused", sock},
		{"snapshot-delete", sock},
		{"snapshot-create"},
		{"snapshot-list", "--json", "--tree", sock},
		{"snapshot-list", sock, "a", "b"},
		{"snapshot-frobnicate", sock},
		{"snapshot-create", "--bogus", sock},
		{"--launch-cmd", "qemu 'unterminated", "snapshot-list", sock},
	} {
		fails(t, bin, 2, nil, cmd(args...)...)
	}
	// Failures: status 1, one line naming the snapshot.
	fails(t, bin, 1, []string{`"nosuch"`, "not found"}, cmd("snapshot-revert", "-n", "nosuch", sock)...)
	fails(t, bin, 1, []string{`"nosuch"`, "not found"}, cmd("snapshot-delete", "-n", "nosuch", sock)...)
	fails(t, bin, 1, []string{`"nosuch"`, "not found"}, cmd("snapshot-list", sock, "nosuch")...)
	fails(t, bin, 1, []string{`"base"`, "exists"}, cmd("snapshot-create", "-n", "base", sock)...)
	fails(t, bin, 1, []string{`"a/b"`, "invalid snapshot name"}, cmd("snapshot-create", "-n", "a/b", sock)...)
	fails(t, bin, 1, []string{`"disks"`, "disk-only"}, cmd("snapshot-revert", "-n", "disks", sock)...)
	fails(t, bin, 1, []string{"does not serve QMP on " + sock}, cmd("--launch-cmd", "qemu-system-x86_64 -qmp unix:/elsewhere,server=on", "snapshot-revert", "-n", "base", sock)...)

	// Monitor busy: another client holds xlsnap's socket.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	holder, err := qmp.Dial(ctx, "unix:"+sock)
	if err != nil {
		t.Fatal(err)
	}
	fails(t, bin, 1, []string{"monitor in use by another client"}, cmd("--timeout", "300ms", "snapshot-list", sock)...)
	holder.Close()

	// An external snapshot cannot be reverted without a launch command.
	fs, err := store.NewFileStore(st)
	if err != nil {
		t.Fatal(err)
	}
	ext := &store.Record{
		Name: "ext", CreationTime: time.Now(), State: "running", Parent: "child", Status: store.StatusOK,
		Memory: store.Memory{Kind: "external", File: filepath.Join(t.TempDir(), "ext.mem")},
		Disks:  []store.Disk{{Device: vm.Disks[0].Device, Node: vm.Disks[0].Node, File: vm.Disks[0].File, Kind: "external", Overlay: vm.Disks[0].File + ".ext"}},
	}
	if err := fs.Put(ctx, vm.UUID, ext); err != nil {
		t.Fatal(err)
	}
	fails(t, bin, 1, []string{`"ext"`, "--launch-cmd", "refusing"}, cmd("snapshot-revert", "-n", "ext", sock)...)
	// --metadata-only removes the record and leaves the images alone.
	if out := ok(t, bin, cmd("snapshot-delete", "--metadata-only", "-n", "ext", sock)...); out != "ext\n" {
		t.Errorf("delete --metadata-only printed %q", out)
	}
	if _, err := fs.Get(ctx, vm.UUID, "ext"); err == nil {
		t.Error("the ext record survived delete --metadata-only")
	}
	ok(t, bin, cmd("snapshot-delete", "--metadata-only", "-n", defName, sock)...)
	if tags := qemutest.ImgSnapshots(t, vm.Disks[0].File); !slices.Contains(tags, defName) {
		t.Errorf("--metadata-only removed %s from the image: %q", defName, tags)
	}

	// snapshot-delete --children: disks and its child child go, base stays.
	timed("delete --children", func() { out = ok(t, bin, cmd("snapshot-delete", "-n", "disks", "--children", sock)...) })
	if got := strings.Fields(out); !slices.Equal(got, []string{"child", "disks"}) {
		t.Errorf("delete --children printed %q, want child then disks", got)
	}
	for _, d := range vm.Disks {
		tags := qemutest.ImgSnapshots(t, d.File)
		if slices.Contains(tags, "disks") || slices.Contains(tags, "child") || !slices.Contains(tags, "base") {
			t.Errorf("after delete --children, %s holds %q", d.File, tags)
		}
	}
	// The untracked image snapshot is listed as such.
	plain := ok(t, bin, cmd("snapshot-list", sock)...)
	if !regexp.MustCompile(`(?m)^` + defName + `\s+\d{4}-.*\(untracked\)$`).MatchString(plain) {
		t.Errorf("untracked %s not listed:\n%s", defName, plain)
	}
	if names := checkJSON(t, ok(t, bin, cmd("snapshot-list", "--json", sock)...)); len(names) != 1 || names[0]["name"] != "base" {
		t.Errorf("after deletes --json = %v", names)
	}
	// A plain delete.
	ok(t, bin, cmd("snapshot-delete", "-n", "base", sock)...)
	if tags := qemutest.ImgSnapshots(t, vm.Disks[1].File); slices.Contains(tags, "base") {
		t.Errorf("base still in %s: %q", vm.Disks[1].File, tags)
	}

	revertExternal(t, bin, vm, sock, st)
}

// revertExternal takes an external snapshot and reverts to it, which
// restarts QEMU from the command line in a --launch-config file.
func revertExternal(t *testing.T, bin string, vm *qemutest.VM, sock, st string) {
	g := []string{"--store", st}
	cmd := func(args ...string) []string { return append(append([]string{}, g...), args...) }
	cPre := counter(t, vm)
	start := time.Now()
	ok(t, bin, cmd("snapshot-create", "-n", "ext1", "--external", sock)...)
	wall := time.Since(start)
	cSnap := counter(t, vm)
	snap := byName(checkJSON(t, ok(t, bin, cmd("snapshot-list", "--json", sock, "ext1")...)), "ext1")
	if snap == nil {
		t.Fatal("--json does not list ext1")
	}
	checkExternal(t, vm, snap, wall)
	// Let the guest run on well past the snapshot, so that a guest that
	// did not go back is told apart from one that did.
	cRun := counter(t, vm)
	for deadline := time.Now().Add(5 * time.Second); cRun <= cSnap && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
		cRun = counter(t, vm)
	}
	if cRun <= cSnap {
		t.Fatalf("counter %d then %d: the guest does not run after the external snapshot", cSnap, cRun)
	}
	fails(t, bin, 1, []string{`"ext1"`, "--launch-cmd", "refusing"}, cmd("snapshot-revert", "-n", "ext1", sock)...)

	cfg := filepath.Join(t.TempDir(), "launch.conf")
	if err := os.WriteFile(cfg, []byte("# the domain's QEMU\n"+strings.Join(vm.Argv, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	oldPid := vm.Pid
	start = time.Now()
	r := xl(t, bin, cmd("--launch-config", cfg, "snapshot-revert", "-n", "ext1", "--paused", sock)...)
	// Whatever happened, a QEMU that xlsnap started is this test's to end.
	newPid := peerPid(vm.Socket)
	if newPid != 0 && newPid != oldPid {
		t.Cleanup(func() { killAndWait(t, newPid) })
	}
	if r.code != 0 {
		t.Fatalf("external revert: exit %d\nstdout: %s\nstderr: %s", r.code, r.stdout, r.stderr)
	}
	t.Logf("external revert (QEMU restarted): %v", time.Since(start).Round(time.Millisecond))
	select {
	case <-vm.Exited():
	default:
		t.Errorf("the old QEMU (pid %d) still runs after the revert", oldPid)
	}
	if newPid == 0 || newPid == oldPid {
		t.Fatalf("no new QEMU serves %s after the revert (peer pid %d, old pid %d)", vm.Socket, newPid, oldPid)
	}
	// The rig's monitor died with the old QEMU: dial its socket again.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	mon, err := qmp.Dial(ctx, "unix:"+vm.Socket)
	if err != nil {
		t.Fatal(err)
	}
	defer mon.Close()
	vm.Mon = mon
	// The memory file was loaded: a guest that booted afresh would count
	// from zero, one that kept running would be past cRun.
	c := counter(t, vm)
	if c < cPre || c > cSnap {
		t.Errorf("after the external revert the counter is %d; the snapshot was taken between %d and %d, and the guest had reached %d", c, cPre, cSnap, cRun)
	}
	if s := status(t, vm); s.Running {
		t.Errorf("after --paused revert: %+v", s)
	}
	// The new QEMU runs on new overlays over the snapshot's images: not on
	// the snapshot's own overlays (they hold the state after the snapshot)
	// and not on its images (they must stay as the snapshot left them).
	top := topImages(t, vm)
	for _, d := range snap["disks"].([]any) {
		dm := d.(map[string]any)
		dev, file, overlay := dm["device"].(string), dm["file"].(string), dm["overlay"].(string)
		img, ok := top[dev]
		switch {
		case !ok:
			t.Errorf("after the revert QEMU has no disk %s", dev)
		case img.file == file || img.file == overlay:
			t.Errorf("after the revert %s runs on %s, not on a new overlay", dev, img.file)
		case img.backing != file:
			t.Errorf("after the revert %s runs on %s backed by %q, want backed by the snapshot's image %s", dev, img.file, img.backing, file)
		}
	}
	s := byName(checkJSON(t, ok(t, bin, cmd("snapshot-list", "--json", sock)...)), "ext1")
	if s == nil || s["current"] != true {
		t.Errorf("ext1 after revert: %v", s)
	}
}

// checkExternal checks the external snapshot s, as snapshot-list --json
// reports it, against QEMU and the files on disk: every disk of vm runs
// on the overlay s names, backed by the disk's image; the memory file is a
// non-empty QEMU migration stream; the guest was stopped for a measured
// time no longer than the create command (wall) took.
func checkExternal(t *testing.T, vm *qemutest.VM, s map[string]any, wall time.Duration) {
	t.Helper()
	name := s["name"]
	if s["state"] != "running" {
		t.Errorf("%s: state %v, want running", name, s["state"])
	}
	mem := s["memory"].(map[string]any)
	memFile, _ := mem["file"].(string)
	if mem["kind"] != "external" || memFile == "" {
		t.Errorf("%s: memory %v, want an external memory file", name, mem)
	} else if magic := fileHead(t, memFile, 4); string(magic) != "QEVM" {
		t.Errorf("%s: memory file %s starts with %q, not a QEMU migration stream", name, memFile, magic)
	}
	if ms, _ := s["downtime_ms"].(float64); ms <= 0 || ms > float64(wall.Milliseconds()) {
		t.Errorf("%s: downtime_ms %v, want more than 0 and at most the %v the create took", name, s["downtime_ms"], wall)
	} else {
		t.Logf("%s: guest stopped for %vms of %v", name, ms, wall.Round(time.Millisecond))
	}
	top := topImages(t, vm)
	disks, _ := s["disks"].([]any)
	if len(disks) != len(vm.Disks) {
		t.Errorf("%s: %d disks, want %d", name, len(disks), len(vm.Disks))
	}
	for _, d := range disks {
		dm := d.(map[string]any)
		dev, file, overlay := dm["device"].(string), dm["file"].(string), dm["overlay"].(string)
		if dm["kind"] != "external" || overlay == "" || overlay == file {
			t.Errorf("%s: disk %v is not external", name, dm)
			continue
		}
		if img := top[dev]; img.file != overlay || img.backing != file {
			t.Errorf("%s: QEMU runs %s on %q backed by %q, want %s backed by %s", name, dev, img.file, img.backing, overlay, file)
		}
		chain := imgChain(t, overlay)
		if len(chain) < 2 || chain[0].Filename != overlay || chain[0].BackingFilename != file || chain[1].Filename != file {
			t.Errorf("%s: qemu-img info --backing-chain %s: %+v, want %s over %s", name, overlay, chain, overlay, file)
		}
	}
}

// fileHead returns the first n bytes of file (fewer if it is shorter).
func fileHead(t *testing.T, file string, n int) []byte {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, n)
	k, err := io.ReadFull(f, b)
	if err != nil && err != io.ErrUnexpectedEOF && err != io.EOF {
		t.Fatal(err)
	}
	return b[:k]
}

// topImage is the image a disk's device runs on and that image's backing
// file, as QEMU reports them.
type topImage struct{ file, backing string }

// topImages asks QEMU (query-block on the rig's monitor) which image each
// disk runs on, by qdev id.
func topImages(t *testing.T, vm *qemutest.VM) map[string]topImage {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var blocks []struct {
		QDev     string `json:"qdev"`
		Inserted *struct {
			Image struct {
				Filename        string `json:"filename"`
				BackingFilename string `json:"backing-filename"`
			} `json:"image"`
		} `json:"inserted"`
	}
	if err := vm.Mon.Execute(ctx, "query-block", nil, &blocks); err != nil {
		t.Fatal(err)
	}
	top := map[string]topImage{}
	for _, b := range blocks {
		if b.Inserted == nil {
			continue
		}
		// "dev0", or a path such as /machine/peripheral/dev0/…
		dev := b.QDev
		if rest, found := strings.CutPrefix(dev, "/machine/peripheral/"); found {
			dev, _, _ = strings.Cut(rest, "/")
		}
		top[dev] = topImage{file: b.Inserted.Image.Filename, backing: b.Inserted.Image.BackingFilename}
	}
	return top
}

// chainImage is one image of `qemu-img info --backing-chain --output=json`.
type chainImage struct {
	Filename        string `json:"filename"`
	BackingFilename string `json:"backing-filename"`
}

// imgChain returns the backing chain of file, top first, as qemu-img
// reads it (-U: QEMU holds the image).
func imgChain(t *testing.T, file string) []chainImage {
	t.Helper()
	var chain []chainImage
	out := qemutest.Img(t, "info", "--backing-chain", "-U", "--output=json", file)
	if err := json.Unmarshal([]byte(out), &chain); err != nil {
		t.Fatalf("qemu-img info --backing-chain %s: %v\n%s", file, err, out)
	}
	return chain
}

// killAndWait ends a QEMU the test did not start (xlsnap's relaunch) by
// pid and waits until it is gone.
func killAndWait(t *testing.T, pid int) {
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && err != syscall.ESRCH {
		t.Errorf("kill %d: %v", pid, err)
		return
	}
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if err := syscall.Kill(pid, 0); err == syscall.ESRCH {
			return
		}
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if i := bytes.LastIndexByte(b, ')'); i > 0 && i+2 < len(b) && (b[i+2] == 'Z' || b[i+2] == 'X') {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Errorf("pid %d did not exit after SIGKILL", pid)
}

// TestXlsnapNoUUID checks that a QEMU without -uuid needs --uuid.
func TestXlsnapNoUUID(t *testing.T) {
	qemutest.Require(t)
	bin := buildXlsnap(t)
	sock := filepath.Join(socketDir(t), "xl.sock")
	qemutest.Start(t, qemutest.Options{NoUUID: true, Disks: 1, ExtraArgs: []string{"-qmp", "unix:" + sock + ",server=on,wait=off"}})
	st := filepath.Join(t.TempDir(), "store")
	fails(t, bin, 1, []string{"without -uuid", "--uuid UUID"}, "--store", st, "snapshot-list", sock)
	fails(t, bin, 1, []string{`"s1"`, "--uuid UUID"}, "--store", st, "snapshot-create", "-n", "s1", sock)
	const uuid = "6f1c1a38-3c1e-4d2b-9a4e-0c7d2a1b5e90"
	ok(t, bin, "--store", st, "--uuid", uuid, "snapshot-create", "-n", "s1", "--disk-only", sock)
	if _, err := os.Stat(filepath.Join(st, uuid, store.RecordFileName("s1"))); err != nil {
		t.Errorf("record not under the given UUID: %v", err)
	}
	// Global options after the subcommand work too.
	if names := listNames(t, ok(t, bin, "snapshot-list", sock, "--store", st, "--uuid", uuid)); !slices.Equal(names, []string{"s1"}) {
		t.Errorf("list = %q", names)
	}
}
