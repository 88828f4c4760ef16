package etcdstore

import (
	"context"
	"errors"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/vmsnap/vmsnap/store"
)

// TestEtcdStopped: etcd stops in the middle of an operation (intent
// written, commit pending). Every call fails within the request timeout
// with an error wrapping ErrUnavailable, none hangs; once etcd is back the
// store holds exactly what was written before (the intent), and the lock
// works again.
func TestEtcdStopped(t *testing.T) {
	srv := startEtcd(t)
	const timeout = time.Second
	s := newStore(t, srv, Options{Prefix: "/stopped", LockTTL: 3 * time.Second, RequestTimeout: timeout})
	ctx := testContext(t)
	unlock, err := s.Lock(ctx, dom)
	must(t, err)
	intent := &store.Record{Name: "s1", Status: store.StatusCreating}
	must(t, s.Put(ctx, dom, intent))

	srv.stop()
	commit := *intent
	commit.Status = store.StatusOK
	calls := map[string]func() error{
		"Put":        func() error { return s.Put(ctx, dom, &commit) },
		"SetCurrent": func() error { return s.SetCurrent(ctx, dom, "s1") },
		"Get":        func() error { _, err := s.Get(ctx, dom, "s1"); return err },
		"List":       func() error { _, err := s.List(ctx, dom); return err },
		"Current":    func() error { _, err := s.Current(ctx, dom); return err },
		"Delete":     func() error { return s.Delete(ctx, dom, "s1") },
		"Lock(other domain)": func() error {
			u, err := s.Lock(ctx, "00000000-0000-0000-0000-000000000002")
			if err == nil {
				u()
			}
			return err
		},
	}
	for name, call := range calls {
		start := time.Now()
		err := call()
		took := time.Since(start)
		if !errors.Is(err, ErrUnavailable) {
			t.Errorf("%s with etcd stopped: err = %v, want ErrUnavailable", name, err)
		}
		if took > 3*timeout {
			t.Errorf("%s with etcd stopped took %v, request timeout %v", name, took, timeout)
		}
		if name == "Put" {
			t.Logf("Put with etcd stopped: %v (after %v)", err, took.Round(time.Millisecond))
		}
	}
	if _, err := Open(ctx, clientv3.Config{Endpoints: []string{srv.endpoint()}}, Options{RequestTimeout: timeout}); !errors.Is(err, ErrUnavailable) {
		t.Errorf("Open with etcd stopped: err = %v, want ErrUnavailable", err)
	}

	srv.restart()
	// Nothing lies: the record is still the intent, no current was set.
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var r *store.Record
	for {
		if r, err = s.Get(rctx, dom, "s1"); err == nil || rctx.Err() != nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil || r.Status != store.StatusCreating {
		t.Fatalf("after etcd came back: %+v, %v; want the intent", r, err)
	}
	if cur, err := s.Current(ctx, dom); err != nil || cur != "" {
		t.Errorf("Current after etcd came back = %q, %v", cur, err)
	}
	// The lock is still held (the lease survives a restart shorter than
	// its TTL) or was lost; either way unlock settles it and a new Lock
	// works.
	if err := unlock(); err != nil && !errors.Is(err, ErrLockLost) {
		t.Errorf("unlock after etcd came back: %v", err)
	}
	lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	u, err := s.Lock(lctx, dom)
	must(t, err)
	must(t, s.Put(ctx, dom, &commit))
	must(t, u())
}

// TestWaitingLockEtcdStopped: a Lock waiting for another holder while etcd
// stops ends with an error once its lease can no longer be renewed (at
// most the TTL), not never.
func TestWaitingLockEtcdStopped(t *testing.T) {
	srv := startEtcd(t)
	const ttl = 2 * time.Second
	a := newStore(t, srv, Options{Prefix: "/waiting", LockTTL: ttl, RequestTimeout: time.Second})
	b := newStore(t, srv, Options{Prefix: "/waiting", LockTTL: ttl, RequestTimeout: time.Second})
	ctx := testContext(t)
	unlock, err := a.Lock(ctx, dom)
	must(t, err)
	defer unlock()
	done := make(chan error, 1)
	go func() {
		u, err := b.Lock(ctx, dom)
		if err == nil {
			u()
		}
		done <- err
	}()
	time.Sleep(200 * time.Millisecond)
	srv.stop()
	select {
	case err := <-done:
		if !errors.Is(err, ErrLockLost) && !errors.Is(err, ErrUnavailable) {
			t.Errorf("waiting Lock after etcd stopped: %v, want ErrLockLost or ErrUnavailable", err)
		}
		t.Logf("waiting Lock: %v", err)
	case <-time.After(ttl + 5*time.Second):
		t.Fatal("a waiting Lock hangs after etcd stopped")
	}
}
