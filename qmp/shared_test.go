package qmp_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/digitalocean/go-qemu/qemu"
	goqemuqmp "github.com/digitalocean/go-qemu/qmp"
	"github.com/google/go-cmp/cmp"

	"github.com/vmsnap/vmsnap/qmp"
)

// hangOnCommand is eventOnCommand, except that "hang" is never answered.
func hangOnCommand(s *serverConn) {
	if !s.handshake() {
		return
	}
	for {
		r, err := s.read()
		if err != nil {
			return
		}
		switch r.Execute {
		case "hang":
		case "query-status":
			s.reply(r, map[string]any{"status": "paused", "singlestep": false, "running": false})
		case "emit":
			var args struct{ Name string }
			json.Unmarshal(r.Arguments, &args)
			s.event(args.Name, map[string]any{"reason": "test"})
			s.reply(r, struct{}{})
		default:
			s.replyError(r, "CommandNotFound", "no "+r.Execute)
		}
	}
}

// receiveNames reads n events from ch, failing the test after a timeout or
// when ch closes early.
func receiveNames[E any](t *testing.T, what string, ch <-chan E, n int, name func(E) string) []string {
	t.Helper()
	var got []string
	timeout := time.After(5 * time.Second)
	for len(got) < n {
		select {
		case ev, ok := <-ch:
			if !ok {
				t.Fatalf("%s: channel closed after %v, want %d events", what, got, n)
			}
			got = append(got, name(ev))
		case <-timeout:
			t.Fatalf("%s: got %v, want %d events", what, got, n)
		}
	}
	return got
}

func eventName(ev qmp.Event) string             { return ev.Name }
func goQEMUEventName(ev goqemuqmp.Event) string { return ev.Event }

// closedWithin reports whether ch is closed (after draining what it holds)
// within d.
func closedWithin[E any](ch <-chan E, d time.Duration) bool {
	timeout := time.After(d)
	for {
		select {
		case _, ok := <-ch:
			if !ok {
				return true
			}
		case <-timeout:
			return false
		}
	}
}

func TestSharedViews(t *testing.T) {
	srv := newScriptServer(t, hangOnCommand)
	c := dial(t, srv.addr)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	v1 := c.Share()
	v2, err := v1.Share()
	if err != nil {
		t.Fatalf("Share of an open view: %v", err)
	}
	v3 := c.Share()
	if v1.Greeting().Version != c.Greeting().Version {
		t.Errorf("view greeting %v, client greeting %v", v1.Greeting(), c.Greeting())
	}

	// Every Subscribe and Events call, on any view, sees every event.
	sub1, err := v1.Subscribe(ctx)
	if err != nil {
		t.Fatal(err)
	}
	sub2, err := v2.Subscribe(ctx)
	if err != nil {
		t.Fatal(err)
	}
	sub2b, err := v2.Subscribe(ctx)
	if err != nil {
		t.Fatal(err)
	}
	gev2, err := v2.Events(ctx)
	if err != nil {
		t.Fatal(err)
	}
	d, err := qemu.NewDomain(v3, "vm")
	if err != nil {
		t.Fatalf("go-qemu NewDomain on a view: %v", err)
	}
	domEvents, _, err := d.Events()
	if err != nil {
		t.Fatal(err)
	}

	if err := v1.Execute(ctx, "emit", map[string]string{"name": "STOP"}, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := v2.Run([]byte(`{"execute":"emit","arguments":{"name":"RESUME"}}`)); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Run(goqemuqmp.Command{Execute: "emit", Args: map[string]string{"name": "SHUTDOWN"}}); err != nil {
		t.Fatal(err)
	}
	want := []string{"STOP", "RESUME", "SHUTDOWN"}
	for what, got := range map[string][]string{
		"view 1 Subscribe":   receiveNames(t, "view 1", sub1, 3, eventName),
		"view 2 Subscribe":   receiveNames(t, "view 2", sub2, 3, eventName),
		"view 2 Subscribe 2": receiveNames(t, "view 2 again", sub2b, 3, eventName),
		"view 2 Events":      receiveNames(t, "view 2 Events", gev2, 3, goQEMUEventName),
		"qemu.Domain Events": receiveNames(t, "domain", domEvents, 3, goQEMUEventName),
	} {
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("%s received (-want +got):\n%s", what, diff)
		}
	}

	// go-qemu's Domain.Close releases its view only.
	if err := d.Close(); err != nil {
		t.Errorf("qemu.Domain.Close: %v", err)
	}
	if !closedWithin(domEvents, 2*time.Second) {
		t.Errorf("the domain's event stream is still open after Domain.Close")
	}
	if err := v3.Execute(ctx, "query-status", nil, nil); !errors.Is(err, qmp.ErrClosed) {
		t.Errorf("Execute on the domain's closed view = %v, want ErrClosed", err)
	}

	// Closing view 1: its channel closes, its calls fail, view 2 goes on.
	if err := v1.Close(); err != nil {
		t.Errorf("Close of view 1: %v", err)
	}
	if err := v1.Close(); err != nil {
		t.Errorf("second Close of view 1: %v", err)
	}
	if !closedWithin(sub1, 2*time.Second) {
		t.Errorf("view 1's subscription is still open after its Close")
	}
	closedCalls := map[string]func() error{
		"Execute": func() error { return v1.Execute(ctx, "query-status", nil, nil) },
		"ExecuteWithFiles": func() error {
			return v1.ExecuteWithFiles(ctx, "query-status", nil, nil)
		},
		"Run":       func() error { _, err := v1.Run([]byte(`{"execute":"query-status"}`)); return err },
		"Subscribe": func() error { _, err := v1.Subscribe(ctx); return err },
		"Events":    func() error { _, err := v1.Events(ctx); return err },
		"Connect":   v1.Connect,
		"Share":     func() error { _, err := v1.Share(); return err },
	}
	for name, call := range closedCalls {
		if err := call(); !errors.Is(err, qmp.ErrClosed) {
			t.Errorf("%s on a closed view = %v, want ErrClosed", name, err)
		}
	}
	if err := v2.Connect(); err != nil {
		t.Errorf("Connect on an open view: %v", err)
	}
	if st, err := qmp.QueryStatus(ctx, v2); err != nil || st.State != qmp.RunStatePaused {
		t.Errorf("QueryStatus on view 2 after view 1 closed = %+v, %v", st, err)
	}
	if err := v2.Execute(ctx, "emit", map[string]string{"name": "STOP"}, nil); err != nil {
		t.Fatal(err)
	}
	receiveNames(t, "view 2 after view 1 closed", sub2, 1, eventName)
	receiveNames(t, "view 2 Events after view 1 closed", gev2, 1, goQEMUEventName)

	// The last view's Disconnect closes the connection.
	if err := v2.Disconnect(); err != nil {
		t.Errorf("Disconnect of the last view: %v", err)
	}
	if err := c.Execute(ctx, "query-status", nil, nil); !errors.Is(err, qmp.ErrClosed) {
		t.Errorf("client call after the last view closed = %v, want ErrClosed", err)
	}
	if !closedWithin(sub2b, 2*time.Second) || !closedWithin(gev2, 2*time.Second) {
		t.Errorf("the last view's channels are still open after its Close")
	}
	if err := c.Share().Execute(ctx, "query-status", nil, nil); !errors.Is(err, qmp.ErrClosed) {
		t.Errorf("a view made after the connection closed: Execute = %v, want ErrClosed", err)
	}
}

// TestSharedCloseAbandonsCalls: closing a view fails its calls waiting for
// a reply, promptly, and leaves the other views' calls alone.
func TestSharedCloseAbandonsCalls(t *testing.T) {
	srv := newScriptServer(t, hangOnCommand)
	c := dial(t, srv.addr)
	t.Cleanup(func() { c.Close() })
	v1, v2 := c.Share(), c.Share()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	errs := make(chan error, 3)
	go func() { errs <- v1.Execute(context.Background(), "hang", nil, nil) }()
	go func() { _, err := v1.Run([]byte(`{"execute":"hang"}`)); errs <- err }()
	other := make(chan error, 1)
	go func() { other <- v2.Execute(ctx, "hang", nil, nil) }()
	time.Sleep(50 * time.Millisecond) // let the requests go out
	if err := v1.Close(); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		select {
		case err := <-errs:
			if !errors.Is(err, qmp.ErrClosed) {
				t.Errorf("pending call on a view being closed = %v, want ErrClosed", err)
			}
		case <-time.After(2 * time.Second):
			t.Fatal("a call pending on a closed view did not return")
		}
	}
	select {
	case err := <-other:
		t.Errorf("the other view's pending call returned %v when view 1 closed", err)
	case <-time.After(100 * time.Millisecond):
	}
	if err := v2.Execute(ctx, "query-status", nil, nil); err != nil {
		t.Errorf("view 2 after view 1 closed: %v", err)
	}
	if err := v2.Close(); err != nil {
		t.Errorf("Close of the last view: %v", err)
	}
	select {
	case err := <-other:
		if !errors.Is(err, qmp.ErrClosed) {
			t.Errorf("pending call when the connection closed = %v, want ErrClosed", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("a call pending when the connection closed did not return")
	}
}

// TestSharedClientClose: closing the Client ends the connection for every
// view at once.
func TestSharedClientClose(t *testing.T) {
	srv := newScriptServer(t, hangOnCommand)
	c := dial(t, srv.addr)
	v1, v2 := c.Share(), c.Share()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sub, err := v1.Subscribe(ctx)
	if err != nil {
		t.Fatal(err)
	}
	gev, err := v2.Events(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if !closedWithin(sub, 2*time.Second) || !closedWithin(gev, 2*time.Second) {
		t.Errorf("views' channels still open after Client.Close")
	}
	for i, v := range []*qmp.Shared{v1, v2} {
		if err := v.Execute(ctx, "query-status", nil, nil); !errors.Is(err, qmp.ErrClosed) {
			t.Errorf("view %d after Client.Close: %v, want ErrClosed", i+1, err)
		}
		if err := v.Close(); err != nil {
			t.Errorf("Close of view %d after Client.Close: %v", i+1, err)
		}
	}
}

// TestSharedConcurrentUse runs calls, subscriptions and closes on many
// views at once (for the race detector): every event reaches every open
// subscription, and the connection closes with the last view.
func TestSharedConcurrentUse(t *testing.T) {
	srv := newScriptServer(t, hangOnCommand)
	c := dial(t, srv.addr)
	t.Cleanup(func() { c.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	const views, events = 8, 20
	vs := []*qmp.Shared{c.Share()}
	for len(vs) < views {
		v, err := vs[len(vs)-1].Share()
		if err != nil {
			t.Fatal(err)
		}
		vs = append(vs, v)
	}
	subs := make([]<-chan qmp.Event, views)
	for i, v := range vs {
		var err error
		if subs[i], err = v.Subscribe(ctx); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	for i, v := range vs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range events {
				name := fmt.Sprintf("EV_%d_%d", i, j)
				if err := v.Execute(ctx, "emit", map[string]string{"name": name}, nil); err != nil {
					t.Errorf("view %d: %v", i, err)
					return
				}
			}
		}()
	}
	for i := range vs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got := 0
			for range subs[i] {
				if got++; got == views*events {
					return
				}
			}
			t.Errorf("view %d's subscription closed after %d of %d events", i, got, views*events)
		}()
	}
	wg.Wait()

	var cwg sync.WaitGroup
	for i, v := range vs {
		cwg.Add(1)
		go func() {
			defer cwg.Done()
			go v.Execute(ctx, "query-status", nil, nil) // may race with Close
			if err := v.Close(); err != nil {
				t.Errorf("Close of view %d: %v", i, err)
			}
		}()
	}
	cwg.Wait()
	if err := c.Execute(ctx, "query-status", nil, nil); !errors.Is(err, qmp.ErrClosed) {
		t.Errorf("client after every view closed: %v, want ErrClosed", err)
	}
}

// TestClientEventsPerCall: each go-qemu Events call on a Client gets a
// channel of its own with every event, and one nobody reads holds up
// neither the others nor command replies.
func TestClientEventsPerCall(t *testing.T) {
	srv := newScriptServer(t, hangOnCommand)
	c := dial(t, srv.addr)
	t.Cleanup(func() { c.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	first, err := c.Events(ctx)
	if err != nil {
		t.Fatal(err)
	}
	second, err := c.Events(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Events(ctx); err != nil { // never read
		t.Fatal(err)
	}
	const n = 50
	for i := range n {
		if err := c.Execute(ctx, "emit", map[string]string{"name": fmt.Sprintf("EV_%d", i)}, nil); err != nil {
			t.Fatal(err)
		}
	}
	a := receiveNames(t, "first Events", first, n, goQEMUEventName)
	b := receiveNames(t, "second Events", second, n, goQEMUEventName)
	if diff := cmp.Diff(a, b); diff != "" || a[0] != "EV_0" || a[n-1] != fmt.Sprintf("EV_%d", n-1) {
		t.Errorf("the two Events channels differ (-first +second):\n%s", diff)
	}
}
