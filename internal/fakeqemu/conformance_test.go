package fakeqemu

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// The conformance suite runs the same QMP exchanges against the fake and
// against a real qemu-system-x86_64 with the same disks, and requires the
// normalised transcripts to be equal. It is what keeps the fake honest.

type confStep struct {
	command string
	args    any
	job     string // job id whose conclusion ends the step's events
}

func confSteps(dir string) []confStep {
	hmp := func(line string) confStep {
		return confStep{command: "human-monitor-command", args: map[string]any{"command-line": line}}
	}
	st := func(command string, args any) confStep { return confStep{command: command, args: args} }
	job := func(command string, args map[string]any) confStep {
		return confStep{command: command, args: args, job: args["job-id"].(string)}
	}
	return []confStep{
		st("query-status", nil),
		st("bogus-cmd", nil),
		st("query-status", map[string]any{"x": 1}),
		hmp("info snapshots"),
		hmp("info status"),
		st("cont", nil),
		st("cont", nil),
		st("query-status", nil),
		st("transaction", tx(internalAction("disk0", "a"), internalAction("disk1", "a"))),
		st("transaction", tx(internalAction("disk0", "b"), internalAction("disk1", "pre"))),
		st("transaction", tx(internalAction("disk0", "b"), internalAction("disk0", "b"))),
		st("transaction", tx(internalAction("file0", "b"))),
		st("transaction", tx(internalAction("dev0", "b"))),
		st("transaction", tx(internalAction("disk0", ""))),
		st("transaction", tx(map[string]any{"type": "bogus", "data": map[string]any{}})),
		st("blockdev-snapshot-internal-sync", map[string]any{"device": "disk0", "name": "only0"}),
		hmp("info snapshots"),
		st("blockdev-snapshot-delete-internal-sync", map[string]any{"device": "disk0", "name": "only0"}),
		st("blockdev-snapshot-delete-internal-sync", map[string]any{"device": "disk0", "name": "only0"}),
		st("blockdev-snapshot-delete-internal-sync", map[string]any{"device": "disk0", "id": "99"}),
		st("blockdev-snapshot-delete-internal-sync", map[string]any{"device": "disk0"}),
		st("snapshot-save", map[string]any{"job-id": "j0", "tag": "s1"}),
		job("snapshot-save", saveArgs("j0", "s1", "disk0", "disk1")),
		st("query-jobs", nil),
		st("snapshot-save", saveArgs("j0", "s2", "disk0")),
		st("job-dismiss", map[string]any{"id": "j0"}),
		st("job-dismiss", map[string]any{"id": "j0"}),
		job("snapshot-save", saveArgs("j1", "s1", "disk0", "disk1")),
		st("query-jobs", nil),
		st("job-dismiss", map[string]any{"id": "j1"}),
		job("snapshot-save", saveArgs("j2", "s2", "nope")),
		st("query-jobs", nil),
		st("job-dismiss", map[string]any{"id": "j2"}),
		job("snapshot-save", map[string]any{"job-id": "j3", "tag": "s2", "vmstate": "disk0", "devices": []string{"disk1"}}),
		st("query-jobs", nil),
		st("job-dismiss", map[string]any{"id": "j3"}),
		job("snapshot-save", map[string]any{"job-id": "j4", "tag": "s2", "vmstate": "disk0", "devices": []string{}}),
		st("query-jobs", nil),
		st("job-dismiss", map[string]any{"id": "j4"}),
		hmp("info snapshots"),
		job("snapshot-load", saveArgs("l1", "s1", "disk0", "disk1")),
		st("query-jobs", nil),
		st("job-dismiss", map[string]any{"id": "l1"}),
		st("query-status", nil),
		job("snapshot-load", saveArgs("l2", "pre", "disk1")),
		st("query-jobs", nil),
		st("job-dismiss", map[string]any{"id": "l2"}),
		st("query-status", nil),
		job("snapshot-load", saveArgs("l3", "zz", "disk0", "disk1")),
		st("query-jobs", nil),
		st("job-dismiss", map[string]any{"id": "l3"}),
		st("query-status", nil),
		hmp("info status"),
		st("cont", nil),
		job("snapshot-delete", map[string]any{"job-id": "d1", "tag": "s1", "devices": []string{"disk0", "disk1"}}),
		st("query-jobs", nil),
		st("job-dismiss", map[string]any{"id": "d1"}),
		job("snapshot-delete", map[string]any{"job-id": "d2", "tag": "s1", "devices": []string{"nope"}}),
		st("query-jobs", nil),
		st("job-dismiss", map[string]any{"id": "d2"}),
		hmp("savevm h1"),
		hmp("savevm h1"),
		hmp("info snapshots"),
		hmp("loadvm nope"),
		hmp("delvm nope"),
		hmp("loadvm h1"),
		hmp("delvm h1"),
		hmp("bogus"),
		st("stop", nil),
		st("stop", nil),
		st("transaction", tx(externalAction("disk0", dir+"/ov0.qcow2", "ov0"), externalAction("disk1", dir+"/ov1.qcow2", "disk0"))),
		st("transaction", tx(map[string]any{"type": "blockdev-snapshot-sync", "data": map[string]any{"node-name": "disk0", "snapshot-file": dir + "/ov0.qcow2"}})),
		st("blockdev-snapshot-sync", map[string]any{"device": "disk0", "snapshot-file": dir + "/x.qcow2"}),
		st("transaction", tx(externalAction("disk0", dir+"/ov0.qcow2", "ov0"), externalAction("disk1", dir+"/ov1.qcow2", "ov1"))),
		st("blockdev-snapshot-sync", map[string]any{"node-name": "ov0", "snapshot-file": dir + "/ov0.qcow2", "snapshot-node-name": "ov0b"}),
		st("blockdev-snapshot-internal-sync", map[string]any{"device": "disk0", "name": "c"}),
		st("query-block", nil),
		st("query-migrate", nil),
		st("migrate", map[string]any{"uri": "fd:nope"}),
		st("getfd", map[string]any{"fdname": "m1"}),
		st("closefd", map[string]any{"fdname": "m1"}),
	}
}

var (
	reDate  = regexp.MustCompile(`\d{4}-\d\d-\d\d \d\d:\d\d:\d\d`)
	reClock = regexp.MustCompile(`\d\d:\d\d:\d\d\.\d{3}`)
	reSize  = regexp.MustCompile(`\d+(\.\d+)? (B|KiB|MiB)`)
	reVMTag = regexp.MustCompile(`vm-\d{14}`)
	reSpace = regexp.MustCompile(`[ \t]+`)
)

// normalise masks values that legitimately differ between runs: times,
// sizes, automatic node names, file sizes.
func normalise(v any) any {
	switch x := v.(type) {
	case map[string]any:
		out := map[string]any{}
		for k, val := range x {
			switch k {
			case "date-sec", "date-nsec", "vm-clock-sec", "vm-clock-nsec", "vm-state-size", "actual-size", "virtual-size", "timestamp",
				"setup-time", "total-time", "downtime", "expected-downtime":
				out[k] = "*"
			case "ram":
				// Counters depend on the guest; compare the field set.
				var keys []string
				for rk := range val.(map[string]any) {
					keys = append(keys, rk)
				}
				sort.Strings(keys)
				out[k] = keys
			case "image":
				// Compare the image identity and chain, not sizes and
				// qcow2 internals.
				m, _ := val.(map[string]any)
				out[k] = map[string]any{"filename": m["filename"], "backing-filename": m["backing-filename"],
					"full-backing-filename": m["full-backing-filename"], "snapshots": normalise(m["snapshots"])}
			default:
				out[k] = normalise(val)
			}
		}
		return out
	case []any:
		var out []any
		for _, e := range x {
			out = append(out, normalise(e))
		}
		return out
	case string:
		s := reDate.ReplaceAllString(x, "DATE")
		s = reClock.ReplaceAllString(s, "CLOCK")
		s = reSize.ReplaceAllString(s, "SIZE")
		s = reVMTag.ReplaceAllString(s, "vm-TAG")
		return reSpace.ReplaceAllString(s, " ")
	default:
		return v
	}
}

// transcript runs the steps and returns one normalised line per step.
func transcript(t *testing.T, sock string, steps []confStep) []string {
	t.Helper()
	c := dialRaw(t, sock)
	g := c.greeting(5 * time.Second)
	qmp := g["QMP"].(map[string]any)
	out := []string{fmt.Sprintf("greeting capabilities=%v", qmp["capabilities"])}
	c.mustRun("qmp_capabilities", nil, nil)
	for _, st := range steps {
		ret, e := c.run(st.command, st.args)
		var reply any
		if e != nil {
			reply = map[string]string{"class": e.class, "desc": e.desc}
		} else {
			var v any
			json.Unmarshal(ret, &v)
			reply = normalise(v)
		}
		var evs []testEvent
		if st.job != "" && e == nil {
			evs = c.eventsUntil("JOB_STATUS_CHANGE", "status", "concluded")
			evs = append(evs, c.drainEvents(20*time.Millisecond)...)
		} else {
			evs = c.drainEvents(20 * time.Millisecond)
		}
		// Job statuses in order; other events as a sorted list, since
		// real QEMU interleaves STOP/RESUME with the reply by timing.
		var jobs, other []string
		for _, ev := range evs {
			if ev.Name == "JOB_STATUS_CHANGE" {
				jobs = append(jobs, fmt.Sprint(ev.Data["id"], ":", ev.Data["status"]))
			} else {
				other = append(other, ev.Name+fmt.Sprint(normalise(ev.Data)))
			}
		}
		sort.Strings(other)
		b, _ := json.Marshal(st.args)
		rb, _ := json.Marshal(reply)
		out = append(out, fmt.Sprintf("%s %s -> %s jobs=%v events=%v", st.command, b, rb, jobs, other))
	}
	return out
}

// makeImages creates the disks both targets use: d0 over base, d1 with a
// disk-only snapshot "pre".
func makeImages(t *testing.T, dir string) {
	t.Helper()
	for _, args := range [][]string{
		{"create", "-q", "-f", "qcow2", dir + "/base.qcow2", "16M"},
		{"create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", dir + "/d0.qcow2"},
		{"create", "-q", "-f", "qcow2", dir + "/d1.qcow2", "16M"},
		{"snapshot", "-c", "pre", dir + "/d1.qcow2"},
	} {
		if out, err := exec.Command("qemu-img", args...).CombinedOutput(); err != nil {
			t.Fatalf("qemu-img %v: %v: %s", args, err, out)
		}
	}
}

func needQEMU(t *testing.T) {
	t.Helper()
	for _, bin := range []string{"qemu-system-x86_64", "qemu-img"} {
		if _, err := exec.LookPath(bin); err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("%s is required when CI=true: %v", bin, err)
			}
			t.Skipf("%s not installed", bin)
		}
	}
}

// startRealQEMU starts qemu-system-x86_64 -S with the two disks and
// returns its QMP socket path. The process is killed at cleanup.
func startRealQEMU(t *testing.T, dir string) string {
	t.Helper()
	sock := filepath.Join(dir, "qmp.sock")
	cmd := exec.Command("qemu-system-x86_64",
		"-machine", "pc,accel=tcg", "-nodefaults", "-display", "none", "-m", "64", "-S",
		"-qmp", "unix:"+sock+",server=on,wait=off",
		"-blockdev", "driver=file,filename="+dir+"/d0.qcow2,node-name=file0",
		"-blockdev", "driver=qcow2,file=file0,node-name=disk0",
		"-blockdev", "driver=file,filename="+dir+"/d1.qcow2,node-name=file1",
		"-blockdev", "driver=qcow2,file=file1,node-name=disk1",
		"-device", "virtio-blk-pci,drive=disk0,id=dev0",
		"-device", "virtio-blk-pci,drive=disk1,id=dev1",
		"-uuid", "12345678-1234-1234-1234-123456789abc")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("start qemu: %v", err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(sock); err == nil {
			return sock
		}
		if time.Now().After(deadline) {
			t.Fatalf("qemu did not create %s: %s", sock, stderr.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestConformanceWithRealQEMU(t *testing.T) {
	needQEMU(t)
	realDir := t.TempDir()
	makeImages(t, realDir)
	// Both runs must use the same paths, so the fake gets the real
	// directory for its disks too; it creates no files there.
	real := transcript(t, startRealQEMU(t, realDir), confSteps(realDir))

	s, err := Start(Options{
		Prelaunch: true,
		UUID:      "12345678-1234-1234-1234-123456789abc",
		Disks: []Disk{
			{Node: "disk0", Device: "dev0", File: realDir + "/d0.qcow2", FileNode: "file0", Backing: []string{"base.qcow2"}, VirtualSize: 16 << 20},
			{Node: "disk1", Device: "dev1", File: realDir + "/d1.qcow2", FileNode: "file1", VirtualSize: 16 << 20},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	if err := s.AddDiskSnapshot("disk1", "pre"); err != nil {
		t.Fatal(err)
	}
	fake := transcript(t, s.Addr(), confSteps(realDir))
	if d := cmp.Diff(real, fake); d != "" {
		t.Errorf("fake and real QEMU 7.2 transcripts differ (-real +fake):\n%s", d)
	}
}
