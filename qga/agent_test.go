package qga_test

import (
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/vmsnap/vmsnap/qga"
	"github.com/vmsnap/vmsnap/qga/qgatest"
)

const (
	sync   = "guest-sync-delimited"
	ping   = "guest-ping"
	status = "guest-fsfreeze-status"
	freeze = "guest-fsfreeze-freeze"
	thaw   = "guest-fsfreeze-thaw"
)

// socketPath returns a path for a unix socket in a short directory (the
// 108-byte limit rules out t.TempDir on some machines).
func socketPath(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("", "qga")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return filepath.Join(d, "qga.sock")
}

func startFake(t *testing.T, opts qgatest.Options) *qgatest.Server {
	t.Helper()
	srv, err := qgatest.Start(socketPath(t), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	return srv
}

func dial(t *testing.T, path string) *qga.Agent {
	t.Helper()
	a, err := qga.Dial(testContext(t, 5*time.Second), path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	return a
}

func testContext(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// TestStaleChannel dials agents whose channel holds stale data of several
// shapes before the sync reply, and checks that the first command gets its
// own reply.
func TestStaleChannel(t *testing.T) {
	tests := []struct {
		name  string
		stale []byte
	}{
		{"clean", nil},
		{"stale replies", []byte("{\"return\": \"frozen\"}\n{\"return\": 7}\n")},
		{"partial reply", []byte(`{"return": {"version": "7.2", "supported_comm`)},
		{"earlier sync reply", []byte("\xff{\"return\": 12345}\n{\"return\": \"frozen\"}\n")},
		{"sentinel then garbage", []byte("\xff not json at all\n\xff{\"return\"\n")},
		{"long binary blob", bytes.Repeat([]byte{'x', 0, '\n', '{'}, 300<<10)},
		{"blob longer than a reply line", bytes.Repeat([]byte("z"), 3<<20)},
		{"oversized line after a sentinel", append(append([]byte("\xff{\"return\": \""), bytes.Repeat([]byte("y"), 2<<20)...), "\"}\n"...)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := startFake(t, qgatest.Options{Filesystems: 2, Stale: tt.stale})
			a := dial(t, srv.Path())
			ctx := testContext(t, 5*time.Second)
			st, err := a.Status(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if st != qga.StatusThawed {
				t.Errorf("Status = %q, want %q", st, qga.StatusThawed)
			}
			if err := a.Ping(ctx); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff([]string{sync, status, ping}, srv.Calls()); diff != "" {
				t.Errorf("commands (-want +got):\n%s", diff)
			}
		})
	}
}

// TestFreezeThaw walks the freeze state machine and checks counts,
// statuses, the agent's refusal of a second freeze and the exact commands
// sent.
func TestFreezeThaw(t *testing.T) {
	srv := startFake(t, qgatest.Options{Filesystems: 3})
	a := dial(t, srv.Path())
	ctx := testContext(t, 5*time.Second)

	type step struct {
		call      func() (any, error)
		want      any
		wantClass string
	}
	n := func(f func(context.Context) (int, error)) func() (any, error) {
		return func() (any, error) { return f(ctx) }
	}
	st := func() (any, error) { return a.Status(ctx) }
	steps := []step{
		{call: st, want: "thawed"},
		{call: n(a.FreezeFilesystems), want: 3},
		{call: st, want: "frozen"},
		{call: n(a.FreezeFilesystems), wantClass: "CommandNotFound"},
		{call: st, want: "frozen"},
		{call: n(a.ThawFilesystems), want: 3},
		{call: st, want: "thawed"},
		{call: n(a.ThawFilesystems), want: 0},
	}
	for i, s := range steps {
		got, err := s.call()
		if s.wantClass != "" {
			var ae *qga.Error
			if !errors.As(err, &ae) || ae.Class != s.wantClass || ae.Command != freeze {
				t.Fatalf("step %d: error %v, want a %s error reply to %s", i, err, s.wantClass, freeze)
			}
			continue
		}
		if err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		if got != s.want {
			t.Fatalf("step %d: got %v, want %v", i, got, s.want)
		}
	}
	want := []string{sync, status, freeze, status, freeze, status, thaw, status, thaw}
	if diff := cmp.Diff(want, srv.Calls()); diff != "" {
		t.Errorf("commands (-want +got):\n%s", diff)
	}
	if srv.Frozen() {
		t.Error("the fake is still frozen")
	}
}

// TestErrorReply checks that an error reply comes back as *qga.Error with
// the agent's class and description, naming the socket and the command,
// and leaves the connection usable.
func TestErrorReply(t *testing.T) {
	tests := []struct {
		command string
		call    func(context.Context, *qga.Agent) error
	}{
		{freeze, func(ctx context.Context, a *qga.Agent) error { _, err := a.FreezeFilesystems(ctx); return err }},
		{thaw, func(ctx context.Context, a *qga.Agent) error { _, err := a.ThawFilesystems(ctx); return err }},
		{status, func(ctx context.Context, a *qga.Agent) error { _, err := a.Status(ctx); return err }},
		{ping, func(ctx context.Context, a *qga.Agent) error { return a.Ping(ctx) }},
	}
	for _, tt := range tests {
		t.Run(tt.command, func(t *testing.T) {
			srv := startFake(t, qgatest.Options{Filesystems: 1})
			a := dial(t, srv.Path())
			ctx := testContext(t, 5*time.Second)
			srv.Next(tt.command, qgatest.Reply{Error: &qgatest.ErrorReply{Class: "GenericError", Desc: "failed to freeze /data: Device busy"}})
			err := tt.call(ctx, a)
			var ae *qga.Error
			if !errors.As(err, &ae) {
				t.Fatalf("error %v (%T) is no *qga.Error", err, err)
			}
			want := &qga.Error{Command: tt.command, Class: "GenericError", Desc: "failed to freeze /data: Device busy"}
			if diff := cmp.Diff(want, ae); diff != "" {
				t.Errorf("error (-want +got):\n%s", diff)
			}
			for _, part := range []string{srv.Path(), tt.command, "Device busy"} {
				if !strings.Contains(err.Error(), part) {
					t.Errorf("error %q does not name %q", err, part)
				}
			}
			if srv.Frozen() {
				t.Error("a failed command changed the freeze state")
			}
			if err := a.Ping(ctx); err != nil {
				t.Errorf("ping after the error reply: %v", err)
			}
			if c := srv.Connections(); c != 1 {
				t.Errorf("%d connections, want 1", c)
			}
		})
	}
}

// TestContextEndsWait checks that a call waiting for a slow reply returns
// when its context ends (deadline or cancel), and that the next command
// resynchronises and is not fooled by the late reply.
func TestContextEndsWait(t *testing.T) {
	tests := []struct {
		name    string
		ctx     func(t *testing.T) context.Context
		wantErr error
	}{
		{"deadline", func(t *testing.T) context.Context { return testContext(t, 100*time.Millisecond) }, context.DeadlineExceeded},
		{"cancel", func(t *testing.T) context.Context {
			ctx, cancel := context.WithCancel(context.Background())
			time.AfterFunc(100*time.Millisecond, cancel)
			t.Cleanup(cancel)
			return ctx
		}, context.Canceled},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := startFake(t, qgatest.Options{Filesystems: 4})
			a := dial(t, srv.Path())
			ctx := testContext(t, 5*time.Second)
			if _, err := a.FreezeFilesystems(ctx); err != nil {
				t.Fatal(err)
			}
			// The late status reply is "frozen": read as thaw's reply it
			// would not decode as a count.
			srv.Next(status, qgatest.Reply{Delay: 600 * time.Millisecond})
			start := time.Now()
			_, err := a.Status(tt.ctx(t))
			took := time.Since(start)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Status error %v, want %v", err, tt.wantErr)
			}
			if took > 400*time.Millisecond {
				t.Errorf("Status returned after %v, not when the context ended", took)
			}
			n, err := a.ThawFilesystems(ctx)
			if err != nil {
				t.Fatalf("thaw after the timeout: %v", err)
			}
			if n != 4 {
				t.Errorf("thaw = %d, want 4", n)
			}
			st, err := a.Status(ctx)
			if err != nil || st != qga.StatusThawed {
				t.Errorf("Status = %q, %v; want thawed", st, err)
			}
			want := []string{sync, freeze, status, sync, thaw, status}
			if diff := cmp.Diff(want, srv.Calls()); diff != "" {
				t.Errorf("commands (-want +got):\n%s", diff)
			}
		})
	}
}

// TestDroppedConnection checks that a broken connection fails the call
// with ErrDisconnected, that the next call dials again, and that a thaw
// whose connection broke is retried on a new one.
func TestDroppedConnection(t *testing.T) {
	srv := startFake(t, qgatest.Options{Filesystems: 2})
	a := dial(t, srv.Path())
	ctx := testContext(t, 5*time.Second)

	srv.Next(freeze, qgatest.Reply{Drop: true})
	_, err := a.FreezeFilesystems(ctx)
	if !errors.Is(err, qga.ErrDisconnected) {
		t.Fatalf("freeze on a dropped connection: %v, want ErrDisconnected", err)
	}
	var ae *qga.Error
	if errors.As(err, &ae) {
		t.Errorf("a dropped connection reported as an agent error: %v", err)
	}
	// Freeze is not retried: the fake never ran it.
	if srv.Frozen() || srv.Count(freeze) != 1 {
		t.Fatalf("freeze ran %d times, frozen %v", srv.Count(freeze), srv.Frozen())
	}
	if n, err := a.FreezeFilesystems(ctx); err != nil || n != 2 {
		t.Fatalf("freeze on a new connection = %d, %v", n, err)
	}
	// The thaw's connection breaks before the fake runs it: it is retried.
	srv.Next(thaw, qgatest.Reply{Drop: true})
	n, err := a.ThawFilesystems(ctx)
	if err != nil || n != 2 {
		t.Fatalf("thaw with a dropped connection = %d, %v; want 2 after a retry", n, err)
	}
	if srv.Frozen() {
		t.Error("the fake is still frozen")
	}
	if c := srv.Connections(); c != 3 {
		t.Errorf("%d connections, want 3", c)
	}
	want := []string{sync, freeze, sync, freeze, thaw, sync, thaw}
	if diff := cmp.Diff(want, srv.Calls()); diff != "" {
		t.Errorf("commands (-want +got):\n%s", diff)
	}

	// The agent goes away for good: calls fail, and do not hang.
	srv.Close()
	if err := a.Ping(ctx); err == nil {
		t.Error("ping with the agent gone succeeded")
	}
	if _, err := a.Status(ctx); err == nil || !strings.Contains(err.Error(), srv.Path()) {
		t.Errorf("status with the agent gone: %v", err)
	}
}

// TestClose checks Close: twice is fine, later calls fail with ErrClosed,
// and a call waiting for a reply returns at once.
func TestClose(t *testing.T) {
	srv := startFake(t, qgatest.Options{})
	a := dial(t, srv.Path())
	srv.Next(ping, qgatest.Reply{Delay: 3 * time.Second})
	time.AfterFunc(100*time.Millisecond, func() { a.Close() })
	start := time.Now()
	err := a.Ping(testContext(t, 10*time.Second))
	if !errors.Is(err, qga.ErrClosed) {
		t.Errorf("ping during Close: %v, want ErrClosed", err)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("ping returned %v after Close", took)
	}
	if err := a.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if _, err := a.Status(testContext(t, time.Second)); !errors.Is(err, qga.ErrClosed) {
		t.Errorf("status after Close: %v, want ErrClosed", err)
	}
	if c := srv.Connections(); c != 1 {
		t.Errorf("%d connections, want 1 (no redial after Close)", c)
	}
}

// TestDialFails checks Dial against a missing socket and against a socket
// nobody answers on (QEMU's chardev with no agent in the guest).
func TestDialFails(t *testing.T) {
	if _, err := qga.Dial(testContext(t, time.Second), filepath.Join(t.TempDir(), "none.sock")); err == nil {
		t.Error("Dial of a missing socket succeeded")
	}

	path := socketPath(t)
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	got := make(chan []byte, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- nil
			return
		}
		defer c.Close()
		buf := make([]byte, 256)
		n, _ := c.Read(buf)
		got <- buf[:n]
		c.Read(buf) // hold the connection until the client gives up
	}()
	start := time.Now()
	_, err = qga.Dial(testContext(t, 200*time.Millisecond), path)
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "is the agent running in the guest") {
		t.Errorf("Dial with no agent: %v", err)
	}
	if took := time.Since(start); took > time.Second {
		t.Errorf("Dial returned after %v, deadline was 200ms", took)
	}
	req := <-got
	if len(req) == 0 || req[0] != 0xff || !bytes.Contains(req, []byte(`"execute":"guest-sync-delimited"`)) || !bytes.Contains(req, []byte(`"id":`)) {
		t.Errorf("first bytes sent %q, want 0xff and guest-sync-delimited with an id", req)
	}
}

// TestConcurrentCalls runs commands from several goroutines (for -race)
// and checks each got its own reply.
func TestConcurrentCalls(t *testing.T) {
	srv := startFake(t, qgatest.Options{Filesystems: 1})
	a := dial(t, srv.Path())
	ctx := testContext(t, 5*time.Second)
	errs := make(chan error, 20)
	for range 10 {
		go func() { errs <- a.Ping(ctx) }()
		go func() {
			st, err := a.Status(ctx)
			if err == nil && st != qga.StatusThawed {
				err = errors.New("status " + st)
			}
			errs <- err
		}()
	}
	for range 20 {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	if c := srv.Count(ping) + srv.Count(status); c != 20 {
		t.Errorf("%d commands reached the agent, want 20", c)
	}
}
