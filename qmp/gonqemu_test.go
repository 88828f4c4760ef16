package qmp_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	goqemuqmp "github.com/digitalocean/go-qemu/qmp"
	"github.com/digitalocean/go-qemu/qmp/raw"
	"github.com/google/go-cmp/cmp"

	"github.com/vmsnap/vmsnap/qmp"
)

// eventOnCommand answers query-status, and for "emit" sends the event named
// in its arguments before replying; anything else gets a DeviceNotFound.
func eventOnCommand(s *serverConn) {
	if !s.handshake() {
		return
	}
	for {
		r, err := s.read()
		if err != nil {
			return
		}
		switch r.Execute {
		case "query-status":
			s.reply(r, map[string]any{"status": "prelaunch", "singlestep": false, "running": false})
		case "emit":
			var args struct{ Name string }
			json.Unmarshal(r.Arguments, &args)
			s.event(args.Name, map[string]any{"reason": "test"})
			s.reply(r, struct{}{})
		default:
			s.replyError(r, "DeviceNotFound", "Device '"+r.Execute+"' not found")
		}
	}
}

func TestGoQEMURawOnClient(t *testing.T) {
	srv := newScriptServer(t, eventOnCommand)
	c := dial(t, srv.addr)
	if err := c.Connect(); err != nil {
		t.Fatalf("Connect on a dialled client: %v", err)
	}

	mon := raw.NewMonitor(c)
	st, err := mon.QueryStatus()
	if err != nil {
		t.Fatalf("raw QueryStatus: %v", err)
	}
	if st.Status != raw.RunStatePrelaunch || st.Running {
		t.Errorf("raw QueryStatus = %+v, want prelaunch, not running", st)
	}

	out, err := c.Run([]byte(`{"execute":"query-status","id":"caller-id"}`))
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	var rep struct {
		Return map[string]any `json:"return"`
		ID     json.RawMessage
	}
	if err := json.Unmarshal(out, &rep); err != nil {
		t.Fatalf("Run returned %q: %v", out, err)
	}
	if rep.Return["status"] != "prelaunch" || len(rep.ID) == 0 {
		t.Errorf("Run returned %s, want the whole reply line with an id", out)
	}

	out, err = c.Run([]byte(`{"execute":"device_del","arguments":{"id":"x"}}`))
	var qe *qmp.Error
	if !errors.As(err, &qe) || qe.Class != "DeviceNotFound" || !strings.Contains(string(out), `"error"`) {
		t.Errorf("Run(device_del) = %s, %v; want raw error reply and *Error DeviceNotFound", out, err)
	}
	if _, err := c.Run([]byte(`not json`)); err == nil {
		t.Errorf("Run(not json) succeeded")
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	events, err := c.Events(ctx)
	if err != nil {
		t.Fatalf("Events: %v", err)
	}
	if err := c.Execute(ctx, "emit", map[string]string{"name": "BLOCK_JOB_READY"}, nil); err != nil {
		t.Fatal(err)
	}
	select {
	case ev := <-events:
		want := goqemuqmp.Event{Event: "BLOCK_JOB_READY", Data: map[string]any{"reason": "test"}}
		want.Timestamp.Seconds, want.Timestamp.Microseconds = 1700000000, 250
		if diff := cmp.Diff(want, ev); diff != "" {
			t.Errorf("go-qemu event mismatch (-want +got):\n%s", diff)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no go-qemu event")
	}
	if err := c.Disconnect(); err != nil {
		t.Errorf("Disconnect: %v", err)
	}
	within(t, time.Second, "go-qemu events channel close", func() {
		for range events {
		}
	})
}

func TestFromGoQEMUSocketMonitor(t *testing.T) {
	srv := newScriptServer(t, eventOnCommand)
	sm, err := goqemuqmp.NewSocketMonitor("unix", strings.TrimPrefix(srv.addr, "unix:"), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if err := sm.Connect(); err != nil {
		t.Fatalf("go-qemu Connect: %v", err)
	}
	m := qmp.FromGoQEMU(sm)
	t.Cleanup(func() { m.Close() })
	// SocketMonitor has RunWithFile, so the result passes files; a
	// monitor without it gives a result that does not claim to.
	if _, ok := m.(qmp.FileSender); !ok {
		t.Errorf("FromGoQEMU(SocketMonitor) is not a FileSender")
	}
	if _, ok := qmp.FromGoQEMU(monitorOnly{sm}).(qmp.FileSender); ok {
		t.Errorf("FromGoQEMU of a monitor without RunWithFile claims FileSender")
	}

	st, err := qmp.QueryStatus(context.Background(), m)
	if err != nil {
		t.Fatalf("QueryStatus: %v", err)
	}
	if diff := cmp.Diff(qmp.Status{State: qmp.RunStatePrelaunch}, st); diff != "" {
		t.Errorf("status mismatch (-want +got):\n%s", diff)
	}

	// SocketMonitor keeps only the description of a QEMU error.
	err = m.Execute(context.Background(), "device_del", map[string]string{"id": "x"}, nil)
	var qe *qmp.Error
	if !errors.As(err, &qe) || qe.Desc != "Device 'device_del' not found" || qe.Command != "device_del" {
		t.Errorf("Execute(device_del) = %#v, want *qmp.Error with the description", err)
	}

	// Two subscribers; one never reads.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	idle, err := m.Subscribe(ctx)
	if err != nil {
		t.Fatalf("Subscribe: %v", err)
	}
	active, err := m.Subscribe(ctx)
	if err != nil {
		t.Fatalf("Subscribe: %v", err)
	}
	names := []string{"STOP", "RESUME", "STOP", "RESUME", "SHUTDOWN"}
	within(t, 5*time.Second, "commands with an idle subscriber", func() {
		for _, n := range names {
			if err := m.Execute(ctx, "emit", map[string]string{"name": n}, nil); err != nil {
				t.Errorf("emit %s: %v", n, err)
			}
		}
	})
	for _, ch := range []<-chan qmp.Event{active, idle} {
		var got []string
		for len(got) < len(names) {
			select {
			case ev := <-ch:
				got = append(got, ev.Name)
				var d struct{ Reason string }
				if err := ev.DecodeData(&d); err != nil || d.Reason != "test" {
					t.Errorf("event data %s: %v", ev.Data, err)
				}
			case <-time.After(5 * time.Second):
				t.Fatalf("events so far %v, want %v", got, names)
			}
		}
		if diff := cmp.Diff(names, got); diff != "" {
			t.Errorf("events (-want +got):\n%s", diff)
		}
	}

	if err := m.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	if err := m.Execute(context.Background(), "query-status", nil, nil); !errors.Is(err, qmp.ErrClosed) {
		t.Errorf("Execute after Close = %v, want ErrClosed", err)
	}
	within(t, time.Second, "subscriptions close after Close", func() {
		for range idle {
		}
		for range active {
		}
	})
}

func TestFromGoQEMUConnectionLost(t *testing.T) {
	srv := newScriptServer(t, func(s *serverConn) {
		if !s.handshake() {
			return
		}
		s.mustRead("hang") // then hang up without a reply
	})
	sm, err := goqemuqmp.NewSocketMonitor("unix", strings.TrimPrefix(srv.addr, "unix:"), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if err := sm.Connect(); err != nil {
		t.Fatal(err)
	}
	m := qmp.FromGoQEMU(sm)
	t.Cleanup(func() { m.Close() })
	within(t, 5*time.Second, "call on a dropped go-qemu monitor", func() {
		if err := m.Execute(context.Background(), "hang", nil, nil); !errors.Is(err, qmp.ErrClosed) {
			t.Errorf("Execute on dropped connection = %v, want ErrClosed", err)
		}
	})
}

// rawMonitor is a go-qemu monitor that returns QEMU's raw replies, errors
// included, the way go-qemu's libvirt-RPC monitor does; Run blocks while
// block is open.
type rawMonitor struct {
	block  chan struct{}
	events chan goqemuqmp.Event
}

func (r *rawMonitor) Connect() error    { return nil }
func (r *rawMonitor) Disconnect() error { close(r.events); return nil }
func (r *rawMonitor) Events(context.Context) (<-chan goqemuqmp.Event, error) {
	return r.events, nil
}

func (r *rawMonitor) Run(cmd []byte) ([]byte, error) {
	var req struct {
		Execute   string         `json:"execute"`
		Arguments map[string]any `json:"arguments"`
	}
	if err := json.Unmarshal(cmd, &req); err != nil {
		return nil, err
	}
	switch req.Execute {
	case "slow":
		<-r.block
		return []byte(`{"return": {}}`), nil
	case "query-status":
		return []byte(`{"return": {"status": "inmigrate", "running": false, "singlestep": false}}`), nil
	default:
		return []byte(`{"error": {"class": "CommandNotFound", "desc": "The command ` + req.Execute + ` has not been found"}}`), nil
	}
}

func TestFromGoQEMURawReplies(t *testing.T) {
	rm := &rawMonitor{block: make(chan struct{}), events: make(chan goqemuqmp.Event)}
	t.Cleanup(func() { close(rm.block) })
	m := qmp.FromGoQEMU(rm)
	t.Cleanup(func() { m.Close() })

	st, err := qmp.QueryStatus(context.Background(), m)
	if err != nil || st.State != qmp.RunStateInMigrate {
		t.Errorf("QueryStatus = %+v, %v; want inmigrate", st, err)
	}

	err = m.Execute(context.Background(), "savevm-ng", nil, nil)
	want := &qmp.Error{Command: "savevm-ng", Class: "CommandNotFound", Desc: "The command savevm-ng has not been found"}
	var qe *qmp.Error
	if !errors.As(err, &qe) {
		t.Fatalf("Execute = %v, want *qmp.Error", err)
	}
	if diff := cmp.Diff(want, qe); diff != "" {
		t.Errorf("error mismatch (-want +got):\n%s", diff)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	if err := m.Execute(ctx, "slow", nil, nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Execute(slow) = %v, want DeadlineExceeded", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("Execute(slow) took %v after its deadline", d)
	}

	sub, err := m.Subscribe(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	rm.events <- goqemuqmp.Event{Event: "RESUME"}
	select {
	case ev := <-sub:
		if ev.Name != "RESUME" || ev.Data != nil {
			t.Errorf("event = %+v, want RESUME without data", ev)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no event")
	}
}

// monitorOnly hides every method of a go-qemu monitor but qmp.Monitor's.
type monitorOnly struct{ goqemuqmp.Monitor }

// TestFromGoQEMUFiles passes a file through go-qemu's RunWithFile: the
// server receives exactly one descriptor of the same file with the
// command, and the caller's file stays usable and non-blocking.
func TestFromGoQEMUFiles(t *testing.T) {
	got := make(chan [2]uint64, 4) // device and inode of each fd received
	srv := newScriptServer(t, func(s *serverConn) {
		if !s.handshake() {
			return
		}
		for {
			r, err := s.read()
			if err != nil {
				return
			}
			for _, fd := range r.FDs {
				var st syscall.Stat_t
				if syscall.Fstat(fd, &st) == nil {
					got <- [2]uint64{uint64(st.Dev), uint64(st.Ino)}
				}
				syscall.Close(fd)
			}
			if r.Execute == "getfd" && len(r.FDs) != 1 {
				s.replyError(r, "GenericError", fmt.Sprintf("getfd with %d descriptors", len(r.FDs)))
				continue
			}
			s.reply(r, struct{}{})
		}
	})
	sm, err := goqemuqmp.NewSocketMonitor("unix", strings.TrimPrefix(srv.addr, "unix:"), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if err := sm.Connect(); err != nil {
		t.Fatal(err)
	}
	m := qmp.FromGoQEMU(sm)
	t.Cleanup(func() { m.Close() })
	fsnd := m.(qmp.FileSender)
	f, err := os.CreateTemp(t.TempDir(), "passed")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	var want syscall.Stat_t
	if err := syscall.Stat(f.Name(), &want); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := fsnd.ExecuteWithFiles(ctx, "getfd", map[string]string{"fdname": "mem"}, nil, f); err != nil {
		t.Fatalf("ExecuteWithFiles(getfd): %v", err)
	}
	select {
	case g := <-got:
		if g != [2]uint64{uint64(want.Dev), uint64(want.Ino)} {
			t.Errorf("server received a descriptor of another file")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("server received no descriptor")
	}
	if _, err := f.WriteString("still mine"); err != nil {
		t.Errorf("caller's file after ExecuteWithFiles: %v", err)
	}
	if err := fsnd.ExecuteWithFiles(ctx, "getfd", map[string]string{"fdname": "x"}, nil, f, f); !errors.Is(err, qmp.ErrNoFileSupport) {
		t.Errorf("ExecuteWithFiles with two files = %v, want ErrNoFileSupport", err)
	}
	if err := fsnd.ExecuteWithFiles(ctx, "query-status", nil, nil); err != nil {
		t.Errorf("ExecuteWithFiles without files: %v", err)
	}
	select {
	case <-got:
		t.Errorf("a descriptor was sent with a command that had none")
	default:
	}
}

// TestClientSendsStringIDs: go-qemu's decoders read the reply's id as a
// string, so the client's ids must be strings.
func TestClientSendsStringIDs(t *testing.T) {
	ids := make(chan json.RawMessage, 8)
	srv := newScriptServer(t, func(s *serverConn) {
		if !s.handshake() {
			return
		}
		for {
			r, err := s.read()
			if err != nil {
				return
			}
			ids <- r.ID
			s.reply(r, map[string]any{"status": "running", "singlestep": false, "running": true})
		}
	})
	c := dial(t, srv.addr)
	if _, err := qmp.QueryStatus(context.Background(), c); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Run([]byte(`{"execute":"query-status"}`)); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		id := <-ids
		var s string
		if err := json.Unmarshal(id, &s); err != nil || s == "" {
			t.Errorf("request id %s is not a non-empty JSON string", id)
		}
	}
}
