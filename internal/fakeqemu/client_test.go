package fakeqemu

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"syscall"
	"testing"
	"time"
)

// rawClient is a minimal QMP client for tests: JSON lines over the unix
// socket, replies and events on separate channels.
type rawClient struct {
	t       *testing.T
	uc      *net.UnixConn
	greet   chan map[string]any
	replies chan map[string]json.RawMessage
	events  chan map[string]json.RawMessage
	closed  chan struct{}
}

type testEvent struct {
	Name string
	Data map[string]any
}

func dialRaw(t *testing.T, path string) *rawClient {
	t.Helper()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatalf("dial %s: %v", path, err)
	}
	rc := &rawClient{t: t, uc: c.(*net.UnixConn), greet: make(chan map[string]any, 1),
		replies: make(chan map[string]json.RawMessage, 100), events: make(chan map[string]json.RawMessage, 1000),
		closed: make(chan struct{})}
	t.Cleanup(func() { rc.uc.Close() })
	go func() {
		defer close(rc.closed)
		sc := bufio.NewScanner(rc.uc)
		sc.Buffer(make([]byte, 1<<20), 16<<20)
		first := true
		for sc.Scan() {
			var m map[string]json.RawMessage
			if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
				t.Errorf("bad line %q: %v", sc.Text(), err)
				return
			}
			switch {
			case first && m["QMP"] != nil:
				var g map[string]any
				json.Unmarshal(sc.Bytes(), &g)
				rc.greet <- g
			case m["event"] != nil:
				rc.events <- m
			default:
				rc.replies <- m
			}
			first = false
		}
	}()
	return rc
}

// connect dials, waits for the greeting and negotiates capabilities.
func connect(t *testing.T, s *Server) *rawClient {
	t.Helper()
	c := dialRaw(t, s.Addr())
	c.greeting(time.Second)
	c.mustRun("qmp_capabilities", nil, nil)
	return c
}

func (c *rawClient) greeting(wait time.Duration) map[string]any {
	c.t.Helper()
	select {
	case g := <-c.greet:
		return g
	case <-time.After(wait):
		c.t.Fatalf("no greeting within %v", wait)
		return nil
	}
}

func (c *rawClient) send(command string, args any, files ...*os.File) {
	c.t.Helper()
	m := map[string]any{"execute": command}
	if args != nil {
		m["arguments"] = args
	}
	b, _ := json.Marshal(m)
	b = append(b, '\n')
	var oob []byte
	if len(files) > 0 {
		var fds []int
		for _, f := range files {
			fds = append(fds, int(f.Fd()))
		}
		oob = syscall.UnixRights(fds...)
	}
	if _, _, err := c.uc.WriteMsgUnix(b, oob, nil); err != nil {
		c.t.Fatalf("send %s: %v", command, err)
	}
}

// run executes a command and returns the raw return value or the error.
func (c *rawClient) run(command string, args any, files ...*os.File) (json.RawMessage, *qerr) {
	c.t.Helper()
	c.send(command, args, files...)
	select {
	case r := <-c.replies:
		if e, ok := r["error"]; ok {
			var qe struct{ Class, Desc string }
			json.Unmarshal(e, &qe)
			return nil, &qerr{class: qe.Class, desc: qe.Desc}
		}
		return r["return"], nil
	case <-c.closed:
		c.t.Fatalf("%s: connection closed", command)
	case <-time.After(5 * time.Second):
		c.t.Fatalf("%s: no reply", command)
	}
	return nil, nil
}

func (c *rawClient) mustRun(command string, args, result any, files ...*os.File) {
	c.t.Helper()
	ret, e := c.run(command, args, files...)
	if e != nil {
		c.t.Fatalf("%s: %s: %s", command, e.class, e.desc)
	}
	if result != nil {
		if err := json.Unmarshal(ret, result); err != nil {
			c.t.Fatalf("%s: decode %s: %v", command, ret, err)
		}
	}
}

func (c *rawClient) mustFail(command string, args any) *qerr {
	c.t.Helper()
	_, e := c.run(command, args)
	if e == nil {
		c.t.Fatalf("%s succeeded, want an error", command)
	}
	return e
}

func (c *rawClient) hmp(line string) string {
	c.t.Helper()
	var out string
	c.mustRun("human-monitor-command", map[string]any{"command-line": line}, &out)
	return out
}

// nextEvent returns the next event, failing after wait.
func (c *rawClient) nextEvent(wait time.Duration) testEvent {
	c.t.Helper()
	select {
	case m := <-c.events:
		var ev testEvent
		json.Unmarshal(m["event"], &ev.Name)
		if d, ok := m["data"]; ok {
			json.Unmarshal(d, &ev.Data)
		}
		var ts struct{ Seconds, Microseconds int64 }
		if err := json.Unmarshal(m["timestamp"], &ts); err != nil || ts.Seconds == 0 {
			c.t.Errorf("event %s has no timestamp: %s", ev.Name, m["timestamp"])
		}
		return ev
	case <-time.After(wait):
		c.t.Fatalf("no event within %v", wait)
		return testEvent{}
	}
}

// eventsUntil collects events until one named name with data matching
// key=value arrives (inclusive).
func (c *rawClient) eventsUntil(name, key, value string) []testEvent {
	c.t.Helper()
	var out []testEvent
	for {
		ev := c.nextEvent(5 * time.Second)
		out = append(out, ev)
		if ev.Name == name && (key == "" || fmt.Sprint(ev.Data[key]) == value) {
			return out
		}
	}
}

// drainEvents returns the events already received, waiting briefly.
func (c *rawClient) drainEvents(wait time.Duration) []testEvent {
	var out []testEvent
	for {
		select {
		case m := <-c.events:
			var ev testEvent
			json.Unmarshal(m["event"], &ev.Name)
			if d, ok := m["data"]; ok {
				json.Unmarshal(d, &ev.Data)
			}
			out = append(out, ev)
		case <-time.After(wait):
			return out
		}
	}
}

func jobStatuses(evs []testEvent, id string) []string {
	var out []string
	for _, ev := range evs {
		if ev.Name == "JOB_STATUS_CHANGE" && ev.Data["id"] == id {
			out = append(out, ev.Data["status"].(string))
		}
	}
	return out
}

func eventNames(evs []testEvent) []string {
	var out []string
	for _, ev := range evs {
		out = append(out, ev.Name)
	}
	return out
}

// startFake starts a fake with two disks and registers cleanup.
func startFake(t *testing.T, opts Options) *Server {
	t.Helper()
	if opts.Disks == nil {
		dir := t.TempDir()
		opts.Disks = []Disk{
			{Node: "disk0", Device: "dev0", File: dir + "/d0.qcow2", FileNode: "file0", Backing: []string{"base.qcow2"}, VirtualSize: 16 << 20},
			{Node: "disk1", Device: "dev1", File: dir + "/d1.qcow2", FileNode: "file1", VirtualSize: 16 << 20},
		}
	}
	s, err := Start(opts)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}
