package qmp_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/digitalocean/go-qemu/qemu"
	goqemuqmp "github.com/digitalocean/go-qemu/qmp"
	"github.com/google/go-cmp/cmp"

	"github.com/vmsnap/vmsnap/internal/qemutest"
	"github.com/vmsnap/vmsnap/qmp"
)

// eventLog records the STOP, RESUME and JOB_STATUS_CHANGE events one reader
// received, in order.
type eventLog struct {
	mu     sync.Mutex
	events []string
}

func (l *eventLog) add(name string, data map[string]any) {
	switch name {
	case "STOP", "RESUME":
	case "JOB_STATUS_CHANGE":
		name = fmt.Sprintf("JOB %v %v", data["id"], data["status"])
	default:
		return
	}
	l.mu.Lock()
	l.events = append(l.events, name)
	l.mu.Unlock()
}

func (l *eventLog) snapshot() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.events)
}

func (l *eventLog) has(event string) bool {
	return slices.Contains(l.snapshot(), event)
}

// count returns how many recorded events are name (STOP, RESUME) or start
// with it ("JOB").
func (l *eventLog) count(prefix string) int {
	n := 0
	for _, e := range l.snapshot() {
		if len(e) >= len(prefix) && e[:len(prefix)] == prefix {
			n++
		}
	}
	return n
}

// waitUntil polls cond every 5 ms until it holds or d has passed.
func waitUntil(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(5 * time.Millisecond)
	}
	return true
}

// shortSocketDir returns a new directory for unix sockets whose path is
// short enough for sun_path, removed at cleanup.
func shortSocketDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "vmsnap-qmp")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// TestQEMUSharedWithGoQEMU: go-qemu's qemu.Domain and vmsnap-style use
// (Execute, Subscribe) share one connection to real QEMU through two
// Shared views, working at the same time. Both receive every STOP, RESUME
// and JOB_STATUS_CHANGE; the domain's Close leaves the other view working;
// closing the last view closes the connection.
func TestQEMUSharedWithGoQEMU(t *testing.T) {
	sock := filepath.Join(shortSocketDir(t), "shared.qmp")
	vm := qemutest.Start(t, qemutest.Options{
		Disks:  1,
		Paused: true,
		// A second monitor for the shared connection: the rig keeps
		// its own client on the first to quit QEMU at cleanup.
		ExtraArgs: []string{"-qmp", "unix:" + sock + ",server=on,wait=off"},
	})
	jobs := "snapshot-save"
	if !qemutest.Version(t).AtLeast(6, 0) {
		jobs = "blockdev-create" // QEMU 5.2 has no snapshot-save
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c, err := qmp.Dial(ctx, "unix:"+sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	goView, ourView := c.Share(), c.Share()

	d, err := qemu.NewDomain(goView, "vm")
	if err != nil {
		t.Fatalf("qemu.NewDomain on a view: %v", err)
	}
	domEvents, _, err := d.Events()
	if err != nil {
		t.Fatal(err)
	}
	ourEvents, err := ourView.Subscribe(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var goLog, ourLog eventLog
	domEnded := make(chan struct{})
	go func() {
		defer close(domEnded)
		for ev := range domEvents {
			goLog.add(ev.Event, ev.Data)
		}
	}()
	go func() {
		for ev := range ourEvents {
			var data map[string]any
			if len(ev.Data) > 0 {
				if err := ev.DecodeData(&data); err != nil {
					t.Errorf("event %s: %v", ev.Name, err)
				}
			}
			ourLog.add(ev.Name, data)
		}
	}()

	// go-qemu queries the domain all along.
	stopQueries := make(chan struct{})
	queriesDone := make(chan struct{})
	var goCalls atomic.Int64
	go func() {
		defer close(queriesDone)
		for {
			select {
			case <-stopQueries:
				return
			default:
			}
			devs, err := d.BlockDevices()
			if err != nil {
				t.Errorf("go-qemu BlockDevices on a view: %v", err)
				return
			}
			if len(devs) != 1 || devs[0].Inserted.NodeName != vm.Disks[0].Node {
				t.Errorf("go-qemu BlockDevices = %+v, want one device on node %s", devs, vm.Disks[0].Node)
				return
			}
			if _, err := d.Status(); err != nil {
				t.Errorf("go-qemu Status on a view: %v", err)
				return
			}
			goCalls.Add(2)
		}
	}()

	// Stops and resumes, sent through either library.
	const rounds = 4
	viaGoQEMU := func(cmd string) error {
		_, err := d.Run(goqemuqmp.Command{Execute: cmd})
		return err
	}
	viaOurs := func(cmd string) error { return ourView.Execute(ctx, cmd, nil, nil) }
	for i := range rounds {
		cont, stop := viaOurs, viaGoQEMU
		if i%2 == 1 {
			cont, stop = viaGoQEMU, viaOurs
		}
		if err := cont("cont"); err != nil {
			t.Fatalf("cont %d: %v", i, err)
		}
		if !waitUntil(10*time.Second, func() bool { return ourLog.count("RESUME") == i+1 }) {
			t.Fatalf("RESUME %d not received: %v", i+1, ourLog.snapshot())
		}
		if err := stop("stop"); err != nil {
			t.Fatalf("stop %d: %v", i, err)
		}
		if !waitUntil(10*time.Second, func() bool { return ourLog.count("STOP") == i+1 }) {
			t.Fatalf("STOP %d not received: %v", i+1, ourLog.snapshot())
		}
	}

	// Jobs run by the vmsnap side, while go-qemu keeps querying.
	const njobs = 3
	for i := range njobs {
		id := fmt.Sprintf("job%d", i)
		var args map[string]any
		if jobs == "snapshot-save" {
			args = map[string]any{"job-id": id, "tag": fmt.Sprintf("snap%d", i),
				"vmstate": vm.Disks[0].Node, "devices": []string{vm.Disks[0].Node}}
		} else {
			args = map[string]any{"job-id": id, "options": map[string]any{
				"driver": "file", "filename": filepath.Join(vm.Dir, id+".img"), "size": 0}}
			t.Cleanup(func() { os.Remove(filepath.Join(vm.Dir, id+".img")) })
		}
		start := time.Now()
		if err := ourView.Execute(ctx, jobs, args, nil); err != nil {
			t.Fatalf("%s %s: %v", jobs, id, err)
		}
		if !waitUntil(20*time.Second, func() bool { return ourLog.has("JOB " + id + " concluded") }) {
			t.Fatalf("%s %s did not conclude: %v", jobs, id, ourLog.snapshot())
		}
		t.Logf("%s %s concluded in %v while go-qemu ran %d calls on the same connection",
			jobs, id, time.Since(start).Round(time.Millisecond), goCalls.Load())
		if err := ourView.Execute(ctx, "job-dismiss", map[string]string{"id": id}, nil); err != nil {
			t.Fatalf("job-dismiss %s: %v", id, err)
		}
		if !waitUntil(10*time.Second, func() bool { return ourLog.has("JOB " + id + " null") }) {
			t.Fatalf("%s %s: no null status after dismiss: %v", jobs, id, ourLog.snapshot())
		}
	}
	close(stopQueries)
	<-queriesDone

	// Nothing lost on either side: both saw the same events, in order.
	ours := ourLog.snapshot()
	if !waitUntil(10*time.Second, func() bool { return len(goLog.snapshot()) >= len(ours) }) {
		t.Errorf("go-qemu's domain received %d events, the other view %d", len(goLog.snapshot()), len(ours))
	}
	if diff := cmp.Diff(ours, goLog.snapshot()); diff != "" {
		t.Errorf("events received by the vmsnap view (-) and by go-qemu's domain (+):\n%s", diff)
	}
	if n := ourLog.count("STOP"); n != rounds {
		t.Errorf("%d STOP received, want %d", n, rounds)
	}
	if n := ourLog.count("RESUME"); n != rounds {
		t.Errorf("%d RESUME received, want %d", n, rounds)
	}
	for i := range njobs {
		var seq []string
		for _, e := range ours {
			var id, status string
			if _, err := fmt.Sscanf(e, "JOB %s %s", &id, &status); err == nil && id == fmt.Sprintf("job%d", i) {
				seq = append(seq, status)
			}
		}
		if len(seq) < 4 || seq[0] != "created" || seq[1] != "running" || seq[len(seq)-2] != "concluded" || seq[len(seq)-1] != "null" {
			t.Errorf("job%d statuses %v, want created, running, …, concluded, null", i, seq)
		}
	}
	t.Logf("both received %d STOP, %d RESUME and %d JOB_STATUS_CHANGE; go-qemu ran %d calls meanwhile",
		ourLog.count("STOP"), ourLog.count("RESUME"), ourLog.count("JOB"), goCalls.Load())

	// go-qemu's Domain.Close releases its view only.
	if err := d.Close(); err != nil {
		t.Errorf("qemu.Domain.Close: %v", err)
	}
	select {
	case <-domEnded:
	case <-time.After(5 * time.Second):
		t.Errorf("the domain's event stream is still open after Domain.Close")
	}
	if _, err := goView.Run([]byte(`{"execute":"query-status"}`)); !errors.Is(err, qmp.ErrClosed) {
		t.Errorf("go-qemu's view after Domain.Close: Run = %v, want ErrClosed", err)
	}
	if err := viaOurs("cont"); err != nil {
		t.Fatalf("the vmsnap view after Domain.Close: %v", err)
	}
	if !waitUntil(10*time.Second, func() bool { return ourLog.count("RESUME") == rounds+1 }) {
		t.Errorf("the vmsnap view's subscription got no RESUME after Domain.Close: %v", ourLog.snapshot())
	}
	if st, err := qmp.QueryStatus(ctx, ourView); err != nil || !st.Running {
		t.Errorf("QueryStatus on the vmsnap view after Domain.Close = %+v, %v; want running", st, err)
	}

	// The last view's Close closes the connection: QEMU takes a new
	// client on the socket.
	if err := ourView.Close(); err != nil {
		t.Errorf("Close of the last view: %v", err)
	}
	if err := c.Execute(ctx, "query-status", nil, nil); !errors.Is(err, qmp.ErrClosed) {
		t.Errorf("the client after its last view closed: %v, want ErrClosed", err)
	}
	dctx, dcancel := context.WithTimeout(ctx, 5*time.Second)
	defer dcancel()
	next, err := qmp.Dial(dctx, "unix:"+sock)
	if err != nil {
		t.Fatalf("dial after the last view closed: %v", err)
	}
	next.Close()
}
