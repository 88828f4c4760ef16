package qmp_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/vmsnap/vmsnap/internal/fakeqemu"
	"github.com/vmsnap/vmsnap/qmp"
)

// The client against the fake QEMU's injected faults.

func startFake(t *testing.T) *fakeqemu.Server {
	t.Helper()
	srv, err := fakeqemu.Start(fakeqemu.Options{
		Profile: fakeqemu.QEMU72,
		Disks:   []fakeqemu.Disk{{Node: "disk0", Device: "dev0", File: "/images/d0.qcow2"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	return srv
}

func dialFake(t *testing.T, srv *fakeqemu.Server) *qmp.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := qmp.Dial(ctx, srv.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestFakeFaultEventBeforeCapabilitiesReply(t *testing.T) {
	srv := startFake(t)
	srv.EventBeforeReply("qmp_capabilities", "RESUME", nil)
	c := dialFake(t, srv)
	st, err := qmp.QueryStatus(context.Background(), c)
	if err != nil || !st.Running {
		t.Fatalf("status %+v %v", st, err)
	}
}

func TestFakeFaultEventBeforeReply(t *testing.T) {
	srv := startFake(t)
	c := dialFake(t, srv)
	ctx := context.Background()
	events, err := c.Subscribe(ctx)
	if err != nil {
		t.Fatal(err)
	}
	srv.EventBeforeReply("query-status", "VSERPORT_CHANGE", map[string]any{"id": "x", "open": true})
	if _, err := qmp.QueryStatus(ctx, c); err != nil {
		t.Fatal(err)
	}
	select {
	case ev := <-events:
		if ev.Name != "VSERPORT_CHANGE" {
			t.Fatalf("event %s", ev.Name)
		}
	case <-time.After(time.Second):
		t.Fatal("event sent before the reply never arrived")
	}
}

func TestFakeFaultCommandError(t *testing.T) {
	srv := startFake(t)
	c := dialFake(t, srv)
	srv.Fail(fakeqemu.Fault{Command: "query-status", Nth: 2, Class: "DeviceNotActive", Desc: "injected"})
	ctx := context.Background()
	if _, err := qmp.QueryStatus(ctx, c); err != nil {
		t.Fatalf("first call: %v", err)
	}
	_, err := qmp.QueryStatus(ctx, c)
	var qe *qmp.Error
	if !errors.As(err, &qe) || qe.Class != "DeviceNotActive" || qe.Desc != "injected" || qe.Command != "query-status" {
		t.Fatalf("second call: %v", err)
	}
	if _, err := qmp.QueryStatus(ctx, c); err != nil {
		t.Fatalf("third call: %v", err)
	}
}

func TestFakeFaultDropAndDelay(t *testing.T) {
	t.Run("drop", func(t *testing.T) {
		srv := startFake(t)
		c := dialFake(t, srv)
		events, err := c.Subscribe(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		srv.DropOn("stop", 1)
		start := time.Now()
		err = c.Execute(context.Background(), "stop", nil, nil)
		if !errors.Is(err, qmp.ErrClosed) || time.Since(start) > time.Second {
			t.Fatalf("dropped call: %v after %v", err, time.Since(start))
		}
		if err := c.Execute(context.Background(), "query-status", nil, nil); !errors.Is(err, qmp.ErrClosed) {
			t.Fatalf("later call: %v", err)
		}
		for range events {
		}
		// The fake, like QEMU, serves the next client.
		c2 := dialFake(t, srv)
		if _, err := qmp.QueryStatus(context.Background(), c2); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("drop-mid-job", func(t *testing.T) {
		srv := startFake(t)
		c := dialFake(t, srv)
		srv.DropMidJob("snapshot-save")
		err := c.Execute(context.Background(), "snapshot-save", map[string]any{"job-id": "j", "tag": "t", "vmstate": "disk0", "devices": []string{"disk0"}}, nil)
		if err == nil {
			err = c.Execute(context.Background(), "query-jobs", nil, nil)
		}
		if !errors.Is(err, qmp.ErrClosed) {
			t.Fatalf("after a drop mid-job: %v", err)
		}
	})
	t.Run("delay", func(t *testing.T) {
		srv := startFake(t)
		c := dialFake(t, srv)
		srv.Delay("query-status", 300*time.Millisecond)
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		defer cancel()
		start := time.Now()
		if _, err := qmp.QueryStatus(ctx, c); !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 200*time.Millisecond {
			t.Fatalf("delayed reply under a 50ms deadline: %v after %v", err, time.Since(start))
		}
		srv.ClearFaults()
		// The late reply is discarded; the next call gets its own.
		if _, err := qmp.QueryStatus(context.Background(), c); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("monitor-in-use", func(t *testing.T) {
		srv := startFake(t)
		dialFake(t, srv)
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		if _, err := qmp.Dial(ctx, srv.Addr()); !errors.Is(err, qmp.ErrMonitorInUse) {
			t.Fatalf("second client: %v", err)
		}
	})
}
