package qmp_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/vmsnap/vmsnap/qmp"
)

func dial(t *testing.T, addr string) *qmp.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := qmp.Dial(ctx, addr)
	if err != nil {
		t.Fatalf("Dial(%s): %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestDialAddressForms(t *testing.T) {
	script := func(s *serverConn) {
		if s.handshake() {
			s.serveStatus()
		}
	}
	unixSrv := newScriptServer(t, script)
	tcpSrv := newTCPScriptServer(t, script)
	tests := []struct {
		name      string
		addr      string
		fdSupport bool
	}{
		{"unix prefix", unixSrv.addr, true},
		{"bare path", strings.TrimPrefix(unixSrv.addr, "unix:"), true},
		{"tcp", tcpSrv.addr, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := dial(t, tt.addr)
			want := qmp.Greeting{
				Version:      qmp.Version{Major: 7, Minor: 2, Micro: 22, Package: "test build"},
				Capabilities: []string{"oob"},
			}
			if diff := cmp.Diff(want, c.Greeting()); diff != "" {
				t.Errorf("Greeting() mismatch (-want +got):\n%s", diff)
			}
			st, err := qmp.QueryStatus(context.Background(), c)
			if err != nil {
				t.Fatalf("QueryStatus: %v", err)
			}
			if diff := cmp.Diff(qmp.Status{State: qmp.RunStatePaused}, st); diff != "" {
				t.Errorf("status mismatch (-want +got):\n%s", diff)
			}
			err = c.ExecuteWithFiles(context.Background(), "query-status", nil, nil, os.Stdin)
			if got := errors.Is(err, qmp.ErrNoFileSupport); got == tt.fdSupport {
				t.Errorf("ExecuteWithFiles error %v: errors.Is(ErrNoFileSupport) = %v, want %v", err, got, !tt.fdSupport)
			}
		})
	}
	if _, err := qmp.Dial(context.Background(), "unix:"); err == nil {
		t.Errorf("Dial(unix:) succeeded, want error")
	}
}

func TestEventBeforeCapabilitiesReply(t *testing.T) {
	srv := newScriptServer(t, func(s *serverConn) {
		if err := s.greet(); err != nil {
			t.Errorf("greet: %v", err)
			return
		}
		r, ok := s.mustRead("qmp_capabilities")
		if !ok {
			return
		}
		// Events racing with the reply, including one with a stray id.
		s.event("RESUME", nil)
		s.send(map[string]any{"event": "STOP", "id": 1, "timestamp": map[string]int{"seconds": 1}})
		s.reply(r, struct{}{})
		s.event("SHUTDOWN", map[string]any{"guest": false})
		s.serveStatus()
	})
	c := dial(t, srv.addr)
	for i := 0; i < 3; i++ {
		if _, err := qmp.QueryStatus(context.Background(), c); err != nil {
			t.Fatalf("QueryStatus after early events: %v", err)
		}
	}
}

func TestOutOfOrderReplies(t *testing.T) {
	const n = 8
	srv := newScriptServer(t, func(s *serverConn) {
		if !s.handshake() {
			return
		}
		var reqs []request
		for len(reqs) < n {
			r, ok := s.mustRead("echo")
			if !ok {
				return
			}
			reqs = append(reqs, r)
		}
		// Answer in reverse order of arrival.
		for i := len(reqs) - 1; i >= 0; i-- {
			var args struct{ N int }
			json.Unmarshal(reqs[i].Arguments, &args)
			s.reply(reqs[i], map[string]int{"n": args.N})
		}
	})
	c := dial(t, srv.addr)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var got struct{ N int }
			if err := c.Execute(context.Background(), "echo", map[string]int{"n": i}, &got); err != nil {
				t.Errorf("echo %d: %v", i, err)
				return
			}
			if got.N != i {
				t.Errorf("echo %d got reply for %d", i, got.N)
			}
		}()
	}
	within(t, 5*time.Second, "out-of-order calls", wg.Wait)
}

func TestLargeReply(t *testing.T) {
	big := strings.Repeat("0123456789abcdef", (1<<20)/16+1)
	srv := newScriptServer(t, func(s *serverConn) {
		if !s.handshake() {
			return
		}
		r, ok := s.mustRead("big")
		if !ok {
			return
		}
		s.reply(r, big)
		s.serveStatus()
	})
	c := dial(t, srv.addr)
	var got string
	if err := c.Execute(context.Background(), "big", nil, &got); err != nil {
		t.Fatalf("big: %v", err)
	}
	if len(got) < 1<<20 || got != big {
		t.Fatalf("big reply: got %d bytes, want %d identical bytes", len(got), len(big))
	}
	if _, err := qmp.QueryStatus(context.Background(), c); err != nil {
		t.Fatalf("QueryStatus after a 1 MiB line: %v", err)
	}
}

func TestSubscriberThatNeverReads(t *testing.T) {
	const n = 1000
	srv := newScriptServer(t, func(s *serverConn) {
		if !s.handshake() {
			return
		}
		for {
			r, err := s.read()
			if err != nil {
				return
			}
			var args struct{ N int }
			json.Unmarshal(r.Arguments, &args)
			s.event("TICK", map[string]int{"n": args.N})
			s.reply(r, struct{}{})
		}
	})
	c := dial(t, srv.addr)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	idle, err := c.Subscribe(ctx)
	if err != nil {
		t.Fatal(err)
	}
	active, err := c.Subscribe(ctx)
	if err != nil {
		t.Fatal(err)
	}
	seen := make(chan []int, 1)
	go func() {
		var ns []int
		for ev := range active {
			var d struct{ N int }
			if err := ev.DecodeData(&d); err != nil {
				t.Errorf("event data: %v", err)
			}
			ns = append(ns, d.N)
			if len(ns) == n {
				break
			}
		}
		seen <- ns
	}()
	within(t, 10*time.Second, "1000 commands with an idle subscriber", func() {
		for i := 0; i < n; i++ {
			if err := c.Execute(ctx, "tick", map[string]int{"n": i}, nil); err != nil {
				t.Errorf("tick %d: %v", i, err)
				return
			}
		}
	})
	want := make([]int, n)
	for i := range want {
		want[i] = i
	}
	select {
	case got := <-seen:
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("active subscriber events (-want +got):\n%s", diff)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("active subscriber did not receive 1000 events")
	}
	// The idle subscriber's queue kept everything, in order.
	for i := 0; i < n; i++ {
		select {
		case ev := <-idle:
			var d struct{ N int }
			ev.DecodeData(&d)
			if ev.Name != "TICK" || d.N != i {
				t.Fatalf("idle subscriber event %d = %s %d", i, ev.Name, d.N)
			}
			if want := time.Unix(1700000000, 250000); !ev.Time.Equal(want) {
				t.Fatalf("event time = %v, want %v", ev.Time, want)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("idle subscriber: event %d missing", i)
		}
	}
	cancel()
	within(t, 2*time.Second, "subscription close on ctx cancel", func() {
		for range idle {
		}
	})
}

func TestContextCancelReturnsPromptly(t *testing.T) {
	late := make(chan request, 1)
	srv := newScriptServer(t, func(s *serverConn) {
		if !s.handshake() {
			return
		}
		r, ok := s.mustRead("hang")
		if !ok {
			return
		}
		late <- r
		// Reply to the abandoned call only after the next request arrives,
		// then answer that one: the late reply must be discarded.
		r2, ok := s.mustRead("query-status")
		if !ok {
			return
		}
		s.reply(r, map[string]string{"status": "stale"})
		s.reply(r2, map[string]any{"status": "running", "running": true})
		s.serveStatus()
	})
	c := dial(t, srv.addr)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := c.Execute(ctx, "hang", nil, nil)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Execute(hang) = %v, want DeadlineExceeded", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("Execute returned %v after its deadline", d)
	}
	<-late
	st, err := qmp.QueryStatus(context.Background(), c)
	if err != nil {
		t.Fatalf("QueryStatus after cancel: %v", err)
	}
	if st.State != qmp.RunStateRunning || !st.Running {
		t.Errorf("QueryStatus got %+v: the abandoned call's reply was not discarded", st)
	}

	done, cancelDone := context.WithCancel(context.Background())
	cancelDone()
	if err := c.Execute(done, "query-status", nil, nil); !errors.Is(err, context.Canceled) {
		t.Errorf("Execute with a cancelled ctx = %v, want Canceled", err)
	}
}

func TestContextCancelDuringBlockedWrite(t *testing.T) {
	stop := make(chan struct{})
	srv := newScriptServer(t, func(s *serverConn) {
		if s.handshake() {
			<-stop // never read again: the client's write blocks
		}
	})
	t.Cleanup(func() { close(stop) })
	c := dial(t, srv.addr)
	// The deadline leaves time to encode the request and start writing it
	// even on a loaded machine under the race detector; if it ended before
	// anything was written the stream would still be usable.
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	huge := map[string]string{"pad": strings.Repeat("x", 4<<20)}
	start := time.Now()
	err := c.Execute(ctx, "pad", huge, nil)
	if !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, qmp.ErrClosed) {
		t.Fatalf("Execute with a blocked write = %v, want DeadlineExceeded or ErrClosed", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("Execute returned %v after start; the write was not interrupted", d)
	}
	// Part of the request was written, so the stream is unusable: the
	// client must say so rather than hang (bounded, so that a regression
	// fails instead of hanging the test binary).
	ctx2, cancel2 := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel2()
	if err := c.Execute(ctx2, "query-status", nil, nil); !errors.Is(err, qmp.ErrClosed) {
		t.Errorf("Execute after a partial write = %v, want ErrClosed", err)
	}
}

func TestConnectionDroppedMidCall(t *testing.T) {
	srv := newScriptServer(t, func(s *serverConn) {
		if !s.handshake() {
			return
		}
		s.mustRead("hang")
		// Return: the connection is closed without a reply.
	})
	c := dial(t, srv.addr)
	sub, err := c.Subscribe(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	err = c.Execute(context.Background(), "hang", nil, nil)
	if !errors.Is(err, qmp.ErrClosed) {
		t.Fatalf("Execute during drop = %v, want ErrClosed", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("Execute took %v to notice the drop", d)
	}
	for i := 0; i < 3; i++ {
		if err := c.Execute(context.Background(), "query-status", nil, nil); !errors.Is(err, qmp.ErrClosed) {
			t.Errorf("Execute after drop = %v, want ErrClosed", err)
		}
	}
	if _, err := c.Subscribe(context.Background()); !errors.Is(err, qmp.ErrClosed) {
		t.Errorf("Subscribe after drop = %v, want ErrClosed", err)
	}
	if err := c.Connect(); !errors.Is(err, qmp.ErrClosed) {
		t.Errorf("Connect after drop = %v, want ErrClosed", err)
	}
	within(t, time.Second, "subscription close after drop", func() {
		for range sub {
		}
	})
	if err := c.Close(); err != nil {
		t.Errorf("Close after drop: %v", err)
	}
	if err := c.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestCloseFailsPendingCall(t *testing.T) {
	srv := newScriptServer(t, func(s *serverConn) {
		if !s.handshake() {
			return
		}
		s.mustRead("hang")
		s.read() // until the client closes
	})
	c := dial(t, srv.addr)
	errc := make(chan error, 1)
	go func() { errc <- c.Execute(context.Background(), "hang", nil, nil) }()
	time.Sleep(20 * time.Millisecond)
	if err := c.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	select {
	case err := <-errc:
		if !errors.Is(err, qmp.ErrClosed) {
			t.Errorf("pending call after Close = %v, want ErrClosed", err)
		}
	case <-time.After(time.Second):
		t.Fatal("pending call did not fail after Close")
	}
}

func TestSecondClientGetsMonitorInUse(t *testing.T) {
	release := make(chan struct{})
	srv := newScriptServer(t, func(s *serverConn) {
		if s.Index > 1 {
			<-release // QEMU accepts but greets only when the first leaves
			return
		}
		if s.handshake() {
			s.serveStatus()
		}
	})
	t.Cleanup(func() { close(release) }) // runs before the server's cleanup
	first := dial(t, srv.addr)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	second, err := qmp.Dial(ctx, srv.addr)
	if err == nil {
		second.Close()
		t.Fatal("second Dial succeeded")
	}
	if !errors.Is(err, qmp.ErrMonitorInUse) || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("second Dial = %v, want ErrMonitorInUse and DeadlineExceeded", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("second Dial took %v", d)
	}
	if _, err := qmp.QueryStatus(context.Background(), first); err != nil {
		t.Errorf("first client after second Dial: %v", err)
	}
}

func TestDialFailsWhenServerHangsUp(t *testing.T) {
	srv := newScriptServer(t, func(s *serverConn) {})
	_, err := qmp.Dial(context.Background(), srv.addr)
	if !errors.Is(err, qmp.ErrClosed) {
		t.Errorf("Dial to a server that hangs up = %v, want ErrClosed", err)
	}
}

func TestQEMUErrorReply(t *testing.T) {
	srv := newScriptServer(t, func(s *serverConn) {
		if !s.handshake() {
			return
		}
		for {
			r, err := s.read()
			if err != nil {
				return
			}
			var args struct{ Class, Desc string }
			json.Unmarshal(r.Arguments, &args)
			s.replyError(r, args.Class, args.Desc)
		}
	})
	c := dial(t, srv.addr)
	tests := []struct {
		class, desc string
	}{
		{"GenericError", "Snapshot 'x' not found"},
		{"DeviceNotFound", "Device 'drive9' not found"},
		{"SomeFutureClass", "kept as sent"},
	}
	for _, tt := range tests {
		t.Run(tt.class, func(t *testing.T) {
			err := c.Execute(context.Background(), "fail", map[string]string{"class": tt.class, "desc": tt.desc}, nil)
			var qe *qmp.Error
			if !errors.As(err, &qe) {
				t.Fatalf("Execute = %v, want *qmp.Error", err)
			}
			want := &qmp.Error{Command: "fail", Class: tt.class, Desc: tt.desc}
			if diff := cmp.Diff(want, qe); diff != "" {
				t.Errorf("error mismatch (-want +got):\n%s", diff)
			}
			if !qmp.IsClass(fmt.Errorf("wrapped: %w", err), tt.class) {
				t.Errorf("IsClass(%q) = false", tt.class)
			}
		})
	}
}

func TestArgumentsMustBeObject(t *testing.T) {
	srv := newScriptServer(t, func(s *serverConn) {
		if !s.handshake() {
			return
		}
		for {
			r, err := s.read()
			if err != nil {
				return
			}
			s.reply(r, r.Arguments)
		}
	})
	c := dial(t, srv.addr)
	var nilArgs *struct{ A int }
	tests := []struct {
		name    string
		args    any
		want    string
		wantErr bool
	}{
		{"nil", nil, "null", false},
		{"typed nil", nilArgs, "null", false},
		{"struct", struct {
			Device string `json:"device"`
		}{"d0"}, `{"device":"d0"}`, false},
		{"array", []int{1}, "", true},
		{"string", "x", "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got json.RawMessage
			err := c.Execute(context.Background(), "echo", tt.args, &got)
			if (err != nil) != tt.wantErr {
				t.Fatalf("Execute error = %v, wantErr %v", err, tt.wantErr)
			}
			if err == nil && string(got) != tt.want {
				t.Errorf("server received arguments %s, want %s", got, tt.want)
			}
		})
	}
}

func TestConcurrentWritesDoNotInterleave(t *testing.T) {
	const workers, perWorker, size = 8, 3, 160 << 10
	srv := newScriptServer(t, func(s *serverConn) {
		if !s.handshake() {
			return
		}
		for {
			r, err := s.read() // fails the test on a corrupt line
			if err != nil {
				if !isConnGone(err) && !strings.Contains(err.Error(), "EOF") {
					t.Errorf("server: %v", err)
				}
				return
			}
			var args struct{ Pad string }
			json.Unmarshal(r.Arguments, &args)
			s.reply(r, len(args.Pad))
		}
	})
	c := dial(t, srv.addr)
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			pad := strings.Repeat(string(rune('a'+w)), size)
			for i := 0; i < perWorker; i++ {
				var n int
				if err := c.Execute(context.Background(), "pad", map[string]string{"pad": pad}, &n); err != nil {
					t.Errorf("worker %d: %v", w, err)
					return
				}
				if n != size {
					t.Errorf("worker %d: server saw %d bytes, want %d", w, n, size)
				}
			}
		}()
	}
	within(t, 60*time.Second, "concurrent large writes", wg.Wait)
}

func TestExecuteWithFilesPassesDescriptor(t *testing.T) {
	received := make(chan []int, 1)
	srv := newScriptServer(t, func(s *serverConn) {
		if !s.handshake() {
			return
		}
		r, ok := s.mustRead("getfd")
		if !ok {
			return
		}
		received <- r.FDs
		for _, fd := range r.FDs {
			f := os.NewFile(uintptr(fd), "received")
			if _, err := f.WriteString("written by the server\n"); err != nil {
				t.Errorf("server: write to received fd: %v", err)
			}
			f.Close()
		}
		s.reply(r, struct{}{})
		s.serveStatus()
	})
	c := dial(t, srv.addr)
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pr.Close() })
	if err := c.ExecuteWithFiles(context.Background(), "getfd", map[string]string{"fdname": "mig"}, nil, pw); err != nil {
		t.Fatalf("ExecuteWithFiles: %v", err)
	}
	pw.Close() // the server holds its own duplicate
	if fds := <-received; len(fds) != 1 {
		t.Fatalf("server received %d fds, want 1", len(fds))
	}
	got, err := io.ReadAll(pr)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != "written by the server\n" {
		t.Errorf("read %q through the passed pipe", got)
	}
	if _, err := qmp.QueryStatus(context.Background(), c); err != nil {
		t.Errorf("QueryStatus after fd passing: %v", err)
	}
}

func TestRunStateDecoding(t *testing.T) {
	tests := []struct {
		json      string
		want      qmp.Status
		wantKnown bool
	}{
		{`{"status":"running","singlestep":false,"running":true}`, qmp.Status{Running: true, State: qmp.RunStateRunning}, true},
		{`{"status":"postmigrate","running":false}`, qmp.Status{State: qmp.RunStatePostMigrate}, true},
		{`{"status":"guest-panicked","singlestep":true,"running":false}`, qmp.Status{Singlestep: true, State: qmp.RunStateGuestPanicked}, true},
		{`{"status":"hibernating-on-mars","running":false}`, qmp.Status{State: "hibernating-on-mars"}, false},
		{`{"status":"","running":false,"future-field":[1,2]}`, qmp.Status{}, false},
	}
	for _, tt := range tests {
		t.Run(string(tt.want.State), func(t *testing.T) {
			var got qmp.Status
			if err := json.Unmarshal([]byte(tt.json), &got); err != nil {
				t.Fatalf("decode %s: %v", tt.json, err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("decode mismatch (-want +got):\n%s", diff)
			}
			if got.State.Known() != tt.wantKnown {
				t.Errorf("Known(%q) = %v, want %v", got.State, got.State.Known(), tt.wantKnown)
			}
		})
	}
}

func TestProbe(t *testing.T) {
	tests := []struct {
		name     string
		commands []string
		caps     map[string]bool // nil: query-migrate-capabilities fails
		want     *qmp.Features
	}{
		{
			name:     "full",
			commands: []string{"query-version", "query-commands", "query-migrate-capabilities", "snapshot-save"},
			caps:     map[string]bool{"xbzrle": false, "background-snapshot": false, "events": true},
			want: &qmp.Features{
				Version:               qmp.Version{Major: 7, Minor: 2, Micro: 22, Package: "test build"},
				Commands:              map[string]bool{"query-version": true, "query-commands": true, "query-migrate-capabilities": true, "snapshot-save": true},
				MigrationCapabilities: map[string]bool{"xbzrle": false, "background-snapshot": false, "events": true},
			},
		},
		{
			name:     "listed but not found",
			commands: []string{"query-version", "query-commands", "query-migrate-capabilities"},
			want: &qmp.Features{
				Version:               qmp.Version{Major: 7, Minor: 2, Micro: 22, Package: "test build"},
				Commands:              map[string]bool{"query-version": true, "query-commands": true, "query-migrate-capabilities": true},
				MigrationCapabilities: map[string]bool{},
			},
		},
		{
			name:     "no migration",
			commands: []string{"query-version", "query-commands"},
			want: &qmp.Features{
				Version:               qmp.Version{Major: 7, Minor: 2, Micro: 22, Package: "test build"},
				Commands:              map[string]bool{"query-version": true, "query-commands": true},
				MigrationCapabilities: map[string]bool{},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := newScriptServer(t, func(s *serverConn) {
				if !s.handshake() {
					return
				}
				for {
					r, err := s.read()
					if err != nil {
						return
					}
					switch {
					case r.Execute == "query-version":
						s.reply(r, map[string]any{"qemu": map[string]int{"major": 7, "minor": 2, "micro": 22}, "package": "test build"})
					case r.Execute == "query-commands":
						var cmds []map[string]string
						for _, c := range tt.commands {
							cmds = append(cmds, map[string]string{"name": c})
						}
						s.reply(r, cmds)
					case r.Execute == "query-migrate-capabilities" && tt.caps != nil:
						var caps []map[string]any
						for k, v := range tt.caps {
							caps = append(caps, map[string]any{"capability": k, "state": v})
						}
						s.reply(r, caps)
					default:
						s.replyError(r, "CommandNotFound", "The command "+r.Execute+" has not been found")
					}
				}
			})
			c := dial(t, srv.addr)
			got, err := qmp.Probe(context.Background(), c)
			if err != nil {
				t.Fatalf("Probe: %v", err)
			}
			if diff := cmp.Diff(tt.want, got, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("Probe mismatch (-want +got):\n%s", diff)
			}
			if !got.Has("query-commands") || got.Has("savevm") {
				t.Errorf("Has: query-commands %v, savevm %v", got.Has("query-commands"), got.Has("savevm"))
			}
			if got.HasMigrationCapability("background-snapshot") != (tt.caps != nil) {
				t.Errorf("HasMigrationCapability(background-snapshot) = %v", !(tt.caps != nil))
			}
		})
	}
}

func TestVersion(t *testing.T) {
	tests := []struct {
		v            qmp.Version
		major, minor int
		want         bool
		str          string
	}{
		{qmp.Version{Major: 7, Minor: 2, Micro: 22}, 7, 2, true, "7.2.22"},
		{qmp.Version{Major: 7, Minor: 2}, 7, 3, false, "7.2.0"},
		{qmp.Version{Major: 7, Minor: 2}, 6, 9, true, "7.2.0"},
		{qmp.Version{Major: 8, Minor: 0}, 7, 2, true, "8.0.0"},
		{qmp.Version{Major: 6, Minor: 2}, 7, 0, false, "6.2.0"},
	}
	for _, tt := range tests {
		if got := tt.v.AtLeast(tt.major, tt.minor); got != tt.want {
			t.Errorf("%v.AtLeast(%d, %d) = %v, want %v", tt.v, tt.major, tt.minor, got, tt.want)
		}
		if got := tt.v.String(); got != tt.str {
			t.Errorf("String() = %q, want %q", got, tt.str)
		}
	}
}
