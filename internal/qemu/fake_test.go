package qemu_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/vmsnap/vmsnap/internal/fakeqemu"
	"github.com/vmsnap/vmsnap/internal/qemu"
	"github.com/vmsnap/vmsnap/internal/sentinel"
	"github.com/vmsnap/vmsnap/qmp"
)

func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// startFake starts a fake QEMU with two disks, disk0 over a backing file,
// and connects to it.
func startFake(t *testing.T, profile fakeqemu.Profile) (*fakeqemu.Server, *qmp.Client) {
	t.Helper()
	srv, err := fakeqemu.Start(fakeqemu.Options{
		Profile: profile,
		UUID:    "5c84adcc-bd59-788a-96d2-195f9b599cfe",
		Disks: []fakeqemu.Disk{
			{Node: "disk0", Device: "dev0", File: "/images/d0.qcow2", Backing: []string{"base0.qcow2"}},
			{Node: "disk1", Device: "dev1", File: "/images/d1.qcow2"},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	return srv, dial(t, srv)
}

func dial(t *testing.T, srv *fakeqemu.Server) *qmp.Client {
	t.Helper()
	mon, err := qmp.Dial(testCtx(t), srv.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mon.Close() })
	return mon
}

func tags(t *testing.T, srv *fakeqemu.Server, node string) []string {
	t.Helper()
	snaps, err := srv.DiskSnapshots(node)
	if err != nil {
		t.Fatal(err)
	}
	out := []string{}
	for _, s := range snaps {
		out = append(out, s.Name)
	}
	return out
}

func TestFakeBlockDevices(t *testing.T) {
	_, mon := startFake(t, fakeqemu.QEMU72)
	blocks, err := qemu.BlockDevices(testCtx(t), mon)
	if err != nil {
		t.Fatal(err)
	}
	type row struct{ Name, Node, Driver, File, Backing string }
	var got []row
	for _, b := range blocks {
		got = append(got, row{b.Name(), b.Inserted.Node, b.Inserted.Driver, b.Inserted.Image.Filename, b.Inserted.Image.Backing})
	}
	want := []row{
		{"dev0", "disk0", "qcow2", "/images/d0.qcow2", "/images/base0.qcow2"},
		{"dev1", "disk1", "qcow2", "/images/d1.qcow2", ""},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("block devices (-want +got):\n%s", diff)
	}
	nodes, err := qemu.NamedNodes(testCtx(t), mon)
	if err != nil {
		t.Fatal(err)
	}
	byFile := qemu.FormatNodesByFile(nodes)
	if byFile["/images/d0.qcow2"] != "disk0" || byFile["/images/d1.qcow2"] != "disk1" || byFile["/images/base0.qcow2"] == "" {
		t.Errorf("format nodes by file %v", byFile)
	}
}

func TestFakeInternalSnapshots(t *testing.T) {
	srv, mon := startFake(t, fakeqemu.QEMU72)
	ctx := testCtx(t)
	nodes := []string{"disk0", "disk1"}

	// All or none: a failure on the second disk leaves the first alone.
	srv.Fail(fakeqemu.Fault{Command: "blockdev-snapshot-internal-sync", Device: "disk1", Desc: "injected"})
	if err := qemu.SnapInternal(ctx, mon, nodes, "s1"); !qmp.IsClass(err, "GenericError") {
		t.Fatalf("SnapInternal with a failing disk: %v", err)
	}
	if got := tags(t, srv, "disk0"); len(got) != 0 {
		t.Fatalf("disk0 holds %v after a failed transaction", got)
	}
	srv.ClearFaults()

	if err := qemu.SnapInternal(ctx, mon, nodes, "s1"); err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		if got := tags(t, srv, n); !slices.Equal(got, []string{"s1"}) {
			t.Errorf("%s holds %v, want [s1]", n, got)
		}
	}
	if err := qemu.DeleteInternal(ctx, mon, "disk0", "s1"); err != nil {
		t.Fatal(err)
	}
	err := qemu.DeleteInternal(ctx, mon, "disk0", "s1")
	if err == nil || !qemu.IsSnapshotMissing(err) {
		t.Errorf("deleting again: %v, want IsSnapshotMissing", err)
	}
	if err := qemu.DeleteInternal(ctx, mon, "nodisk", "s1"); err == nil || qemu.IsSnapshotMissing(err) {
		t.Errorf("deleting on a missing node: %v, want an error that is not IsSnapshotMissing", err)
	}
}

func TestFakeSnapExternal(t *testing.T) {
	srv, mon := startFake(t, fakeqemu.QEMU72)
	ctx := testCtx(t)
	dir := t.TempDir()
	overlays := []qemu.Overlay{
		{Node: "disk0", File: filepath.Join(dir, "d0.s1.qcow2")},
		{Node: "disk1", File: filepath.Join(dir, "d1.s1.qcow2"), NewNode: "top1"},
	}
	for _, o := range overlays {
		// mode existing: QEMU opens the file the caller prepared.
		if err := os.WriteFile(o.File, nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	srv.Fail(fakeqemu.Fault{Command: "blockdev-snapshot-sync", Device: "disk1", Desc: "injected"})
	if _, err := qemu.SnapExternal(ctx, mon, overlays); err == nil {
		t.Fatal("SnapExternal with a failing disk succeeded")
	}
	if chain, _ := srv.Chain("disk0"); len(chain) != 2 {
		t.Fatalf("disk0 chain %v after a failed transaction", chain)
	}
	srv.ClearFaults()
	nodes, err := qemu.SnapExternal(ctx, mon, overlays)
	if err != nil {
		t.Fatal(err)
	}
	if len(nodes) != 2 || nodes[1] != "top1" || len(nodes[0]) > 31 || nodes[0][:7] != "vmsnap-" {
		t.Fatalf("new nodes %v", nodes)
	}
	for i, n := range []string{"disk0", "disk1"} {
		if top, err := srv.ActiveNode(n); err != nil || top != nodes[i] {
			t.Errorf("top of %s: %q %v, want %q", n, top, err, nodes[i])
		}
	}
	blocks, err := qemu.BlockDevices(ctx, mon)
	if err != nil {
		t.Fatal(err)
	}
	if got := blocks[0].Inserted.Image.BackingFiles(); !slices.Equal(got, []string{"/images/d0.qcow2", "/images/base0.qcow2"}) {
		t.Errorf("dev0 chain below the overlay %v", got)
	}
	if qemu.NewNodeName() == qemu.NewNodeName() {
		t.Error("NewNodeName repeats")
	}
}

func TestFakeRunJob(t *testing.T) {
	srv, mon := startFake(t, fakeqemu.QEMU72)
	ctx := testCtx(t)
	save := func(tag string) qemu.Job {
		return qemu.Job{ID: qemu.NewJobID("save"), Command: "snapshot-save",
			Args: map[string]any{"tag": tag, "vmstate": "disk0", "devices": []string{"disk0", "disk1"}}}
	}

	t.Run("failure", func(t *testing.T) {
		srv.FailJob("snapshot-save", "injected failure")
		defer srv.ClearFaults()
		j := save("bad")
		err := qemu.RunJob(ctx, mon, j)
		var je *qemu.JobError
		if !errors.As(err, &je) || je.ID != j.ID || je.Type != "snapshot-save" || je.Msg != "injected failure" {
			t.Fatalf("RunJob: %v, want *JobError", err)
		}
		if _, err := qemu.FindJob(ctx, mon, j.ID); !errors.Is(err, qemu.ErrNoJob) {
			t.Errorf("failed job not dismissed: %v", err)
		}
	})

	t.Run("args untouched, progress, events", func(t *testing.T) {
		j := save("s1")
		var events []string
		var progress [][2]uint64
		j.Observe = func(ev qmp.Event) { events = append(events, ev.Name) }
		j.Progress = func(cur, total uint64) { progress = append(progress, [2]uint64{cur, total}) }
		if err := qemu.RunJob(ctx, mon, j); err != nil {
			t.Fatal(err)
		}
		if _, ok := j.Args["job-id"]; ok {
			t.Error("RunJob changed the caller's Args")
		}
		if !slices.Contains(events, "STOP") || !slices.Contains(events, "RESUME") || !slices.Contains(events, "JOB_STATUS_CHANGE") {
			t.Errorf("observed %v", events)
		}
		if len(progress) == 0 || progress[len(progress)-1][0] != progress[len(progress)-1][1] {
			t.Errorf("progress %v, want a final report of completion", progress)
		}
		if jobs, err := qemu.QueryJobs(ctx, mon); err != nil || len(jobs) != 0 {
			t.Errorf("jobs left: %v %v", jobs, err)
		}
	})

	t.Run("keep", func(t *testing.T) {
		j := save("s2")
		j.Keep = true
		if err := qemu.RunJob(ctx, mon, j); err != nil {
			t.Fatal(err)
		}
		info, err := qemu.WaitJob(ctx, mon, j.ID)
		if err != nil || info.Status != "concluded" || info.Err() != nil {
			t.Fatalf("kept job %+v %v", info, err)
		}
		if err := qemu.Dismiss(ctx, mon, j.ID); err != nil {
			t.Fatal(err)
		}
		if _, err := qemu.WaitJob(ctx, mon, j.ID); !errors.Is(err, qemu.ErrNoJob) {
			t.Errorf("after Dismiss: %v, want ErrNoJob", err)
		}
	})

	t.Run("cancelled", func(t *testing.T) {
		// The job runs to its end; the cancel is reported with it.
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		err := qemu.RunJob(cctx, mon, save("s3"))
		if !errors.Is(err, sentinel.ErrCanceled) || !errors.Is(err, context.Canceled) {
			t.Fatalf("RunJob with a cancelled context: %v, want ErrCanceled", err)
		}
		if got := tags(t, srv, "disk1"); !slices.Contains(got, "s3") {
			t.Errorf("disk1 holds %v; the job should have run to its end", got)
		}
		// A failed job's error wins over the cancel.
		srv.FailJob("snapshot-save", "injected failure")
		defer srv.ClearFaults()
		var je *qemu.JobError
		if err := qemu.RunJob(cctx, mon, save("s4")); !errors.As(err, &je) || errors.Is(err, sentinel.ErrCanceled) {
			t.Errorf("failed job under a cancelled context: %v, want only *JobError", err)
		}
	})

	t.Run("concluded hook", func(t *testing.T) {
		// Concluded runs once, after the job's start and before
		// query-jobs, when the images hold the job's work.
		for _, fail := range []bool{false, true} {
			rec := &recordingMonitor{Monitor: mon}
			j := save(fmt.Sprintf("hook-%v", fail))
			if fail {
				srv.FailJob("snapshot-save", "injected failure")
			}
			var calls int
			var seen []string
			j.Concluded = func() {
				calls++
				rec.note("concluded")
				seen = tags(t, srv, "disk1")
			}
			err := qemu.RunJob(ctx, rec, j)
			srv.ClearFaults()
			if fail != (err != nil) {
				t.Fatalf("fail=%v: RunJob: %v", fail, err)
			}
			log := rec.log()
			at := slices.Index(log, "concluded")
			if calls != 1 || at < 1 || log[0] != "snapshot-save" || !slices.Contains(log[at:], "query-jobs") || slices.Contains(log[:at], "query-jobs") {
				t.Errorf("fail=%v: %d calls, commands and hook in order %v; want the hook once, between snapshot-save and query-jobs", fail, calls, log)
			}
			if !fail && !slices.Contains(seen, j.Args["tag"].(string)) {
				t.Errorf("the hook saw disk1 holding %v, without the job's snapshot", seen)
			}
		}
	})

	t.Run("start refused", func(t *testing.T) {
		j := save("s1") // exists already: refused in the job
		var je *qemu.JobError
		if err := qemu.RunJob(ctx, mon, j); !errors.As(err, &je) {
			t.Errorf("RunJob of an existing tag: %v", err)
		}
		j.Command = "no-such-command"
		if err := qemu.RunJob(ctx, mon, j); !qmp.IsClass(err, "CommandNotFound") {
			t.Errorf("RunJob of an unknown command: %v", err)
		}
	})
}

// TestFakeDropMidJob loses the monitor while a job runs: RunJob reports
// the lost connection, and a new client learns the outcome from the job.
func TestFakeDropMidJob(t *testing.T) {
	srv, mon := startFake(t, fakeqemu.QEMU72)
	srv.DropMidJob("snapshot-load")
	ctx := testCtx(t)
	if err := qemu.SnapInternal(ctx, mon, []string{"disk0", "disk1"}, "d"); err != nil {
		t.Fatal(err)
	}
	vm := qemu.NewVMState(mon, &qmp.Features{Commands: map[string]bool{"snapshot-save": true, "snapshot-load": true, "snapshot-delete": true}})
	if _, err := vm.Save(ctx, qemu.SaveSpec{Tag: "s1", VMStateNode: "disk0", Devices: []string{"disk0", "disk1"}, WasRunning: true}); err != nil {
		t.Fatal(err)
	}
	id := qemu.NewJobID("load")
	err := vm.Load(ctx, qemu.LoadSpec{Tag: "s1", VMStateNode: "disk0", Devices: []string{"disk0", "disk1"}, KeepJobID: id})
	if !errors.Is(err, qmp.ErrClosed) {
		t.Fatalf("Load with the monitor lost: %v, want qmp.ErrClosed", err)
	}
	if qemu.IsLoadFailure(err) {
		t.Error("a lost monitor counted as QEMU's verdict on the load")
	}
	mon2 := dial(t, srv)
	info, err := qemu.WaitJob(ctx, mon2, id)
	if err != nil || info.Status != "concluded" || info.Err() != nil {
		t.Fatalf("job after reconnect %+v %v", info, err)
	}
	if err := qemu.Dismiss(ctx, mon2, id); err != nil {
		t.Fatal(err)
	}
}

func TestFakeVMState(t *testing.T) {
	for _, tc := range []struct {
		profile fakeqemu.Profile
		backend qemu.Backend
	}{
		{fakeqemu.QEMU72, qemu.BackendJobs},
		{fakeqemu.QEMU52, qemu.BackendHMP},
	} {
		t.Run(tc.backend.String(), func(t *testing.T) {
			srv, mon := startFake(t, tc.profile)
			ctx := testCtx(t)
			f, err := qmp.Probe(ctx, mon)
			if err != nil {
				t.Fatal(err)
			}
			vm := qemu.NewVMState(mon, f)
			if vm.Backend() != tc.backend || vm.Backend().ChoosesDevices() != (tc.backend == qemu.BackendJobs) {
				t.Fatalf("backend %v, want %v", vm.Backend(), tc.backend)
			}
			devices := []string{"disk0", "disk1"}
			dt, err := vm.Save(ctx, qemu.SaveSpec{Tag: "s1", VMStateNode: "disk1", Devices: devices, WasRunning: true})
			if err != nil {
				t.Fatal(err)
			}
			if dt < 0 || dt > 10*time.Second {
				t.Errorf("downtime %v", dt)
			}
			for _, n := range devices {
				if got := tags(t, srv, n); !slices.Equal(got, []string{"s1"}) {
					t.Errorf("%s holds %v", n, got)
				}
			}
			if st, err := qemu.Status(ctx, mon); err != nil || !st.Running {
				t.Errorf("guest after Save: %+v %v, want running", st, err)
			}

			at := srv.Counter()
			srv.SetCounter(at + 1_000_000)
			if err := vm.Load(ctx, qemu.LoadSpec{Tag: "s1", VMStateNode: "disk1", Devices: devices}); err != nil {
				t.Fatal(err)
			}
			if c := srv.Counter(); c >= at+1_000_000 {
				t.Errorf("counter %d after Load, want the saved one (about %d)", c, at)
			}

			err = vm.Load(ctx, qemu.LoadSpec{Tag: "nosuch", VMStateNode: "disk1", Devices: devices})
			if err == nil || !qemu.LoadTouchedNothing(err) || !qemu.IsLoadFailure(err) {
				t.Errorf("Load of a missing snapshot: %v, want a failure that touched nothing", err)
			}
			if err := qemu.SnapInternal(ctx, mon, devices, "diskonly"); err != nil {
				t.Fatal(err)
			}
			err = vm.Load(ctx, qemu.LoadSpec{Tag: "diskonly", VMStateNode: "disk1", Devices: devices})
			if err == nil || !qemu.LoadTouchedNothing(err) {
				t.Errorf("Load of a disk-only snapshot: %v, want a failure that touched nothing", err)
			}

			if err := vm.Delete(ctx, "s1", devices); err != nil {
				t.Fatal(err)
			}
			for _, n := range devices {
				if got := tags(t, srv, n); slices.Contains(got, "s1") {
					t.Errorf("%s still holds s1: %v", n, got)
				}
			}
			if tc.backend == qemu.BackendHMP {
				if _, err := vm.Save(ctx, qemu.SaveSpec{Tag: "a b"}); !errors.Is(err, sentinel.ErrInvalidName) {
					t.Errorf("Save of an unsafe name: %v, want ErrInvalidName", err)
				}
				if err := vm.Load(ctx, qemu.LoadSpec{Tag: "-x"}); !errors.Is(err, sentinel.ErrInvalidName) {
					t.Errorf("Load of an unsafe name: %v, want ErrInvalidName", err)
				}
				if err := vm.Delete(ctx, "a\nquit", nil); !errors.Is(err, sentinel.ErrInvalidName) {
					t.Errorf("Delete of an unsafe name: %v, want ErrInvalidName", err)
				}
				want := []string{"savevm s1", "loadvm s1", "loadvm nosuch", "loadvm diskonly", "info snapshots", "delvm s1"}
				if diff := cmp.Diff(want, srv.HMPCommands()); diff != "" {
					t.Errorf("HMP commands (-want +got):\n%s", diff)
				}
			}
		})
	}
}

func TestFakeRunState(t *testing.T) {
	srv, mon := startFake(t, fakeqemu.QEMU72)
	ctx := testCtx(t)
	if id, err := qemu.UUID(ctx, mon); err != nil || id != "5c84adcc-bd59-788a-96d2-195f9b599cfe" {
		t.Errorf("UUID %q %v", id, err)
	}
	if err := qemu.Stop(ctx, mon); err != nil {
		t.Fatal(err)
	}
	if st, err := qemu.Status(ctx, mon); err != nil || st.Running || st.State != qmp.RunStatePaused {
		t.Fatalf("after Stop: %+v %v", st, err)
	}
	if err := qemu.EnsureRunning(ctx, mon); err != nil {
		t.Fatal(err)
	}
	if err := qemu.EnsureRunning(ctx, mon); err != nil {
		t.Fatal(err)
	}
	conts := 0
	for _, c := range srv.Commands() {
		if c == "cont" {
			conts++
		}
	}
	if conts != 1 {
		t.Errorf("%d cont sent, want 1 (the second EnsureRunning finds the guest running)", conts)
	}
	if err := qemu.Cont(ctx, mon); err != nil {
		t.Errorf("cont of a running guest: %v", err)
	}
	srv.Fail(fakeqemu.Fault{Command: "cont", Desc: "injected"})
	qemu.Stop(ctx, mon)
	if err := qemu.EnsureRunning(ctx, mon); err == nil {
		t.Error("EnsureRunning hid the failed cont")
	}
}

// TestFakeRunHMPObserved measures the downtime of an HMP savevm from the
// events QEMU sends before its reply.
func TestFakeRunHMPObserved(t *testing.T) {
	srv, mon := startFake(t, fakeqemu.QEMU52)
	ctx := testCtx(t)
	var dt qemu.Downtime
	err := qemu.RunHMPObserved(ctx, mon, &dt, true, func() error {
		return mon.Execute(ctx, "human-monitor-command", map[string]any{"command-line": "savevm s1"}, nil)
	})
	if err != nil {
		t.Fatal(err)
	}
	if dt.Stopped() || dt.Total() < 0 {
		t.Errorf("downtime %v, still stopped %v, after the RESUME", dt.Total(), dt.Stopped())
	}
	if !slices.Contains(tags(t, srv, "disk0"), "s1") {
		t.Error("savevm did not run")
	}
	boom := errors.New("boom")
	if err := qemu.RunHMPObserved(ctx, mon, &dt, true, func() error { return boom }); err != boom {
		t.Errorf("RunHMPObserved returned %v, want fn's error", err)
	}
}

// removeFile removes a file a test created, ignoring a missing one.
func removeFile(f string) error {
	if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// recordingMonitor logs the commands sent through it, and notes from the
// test, in order.
type recordingMonitor struct {
	qmp.Monitor
	mu   sync.Mutex
	cmds []string
}

func (m *recordingMonitor) note(s string) {
	m.mu.Lock()
	m.cmds = append(m.cmds, s)
	m.mu.Unlock()
}

func (m *recordingMonitor) log() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.cmds)
}

func (m *recordingMonitor) Execute(ctx context.Context, command string, args, result any) error {
	m.note(command)
	return m.Monitor.Execute(ctx, command, args, result)
}
