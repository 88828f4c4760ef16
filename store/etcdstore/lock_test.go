package etcdstore

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/vmsnap/vmsnap/store"
	"github.com/vmsnap/vmsnap/store/storetest"
)

const dom = storetest.DomainA

// The multi-process tests re-run the test binary as a child process
// (TestHelperProcess), selected by these environment variables.
const (
	envHelper   = "ETCDSTORE_TEST_HELPER"
	envEndpoint = "ETCDSTORE_TEST_ENDPOINT"
	envPrefix   = "ETCDSTORE_TEST_PREFIX"
	envTTL      = "ETCDSTORE_TEST_TTL"
)

// TestHelperProcess is not a test: it is the child process of the
// multi-process tests. It talks on stdout and takes orders on stdin.
func TestHelperProcess(t *testing.T) {
	mode := os.Getenv(envHelper)
	if mode == "" {
		t.Skip("helper process for the multi-process tests")
	}
	err := helper(mode)
	if err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

func helper(mode string) error {
	ttl, err := time.ParseDuration(os.Getenv(envTTL))
	if err != nil {
		return err
	}
	ctx := context.Background()
	s, err := Open(ctx, clientv3.Config{Endpoints: []string{os.Getenv(envEndpoint)}}, Options{Prefix: os.Getenv(envPrefix), LockTTL: ttl, Holder: "helper " + mode})
	if err != nil {
		return err
	}
	defer s.Close()
	unlock, err := s.Lock(ctx, dom)
	if err != nil {
		return err
	}
	intent := &store.Record{Name: "s1", Status: store.StatusCreating, Description: "by the helper"}
	if err := s.Put(ctx, dom, intent); err != nil {
		return err
	}
	fmt.Println("locked")
	in := bufio.NewScanner(os.Stdin)
	switch mode {
	case "hold-lock":
		io.Copy(io.Discard, os.Stdin)
		return unlock()
	case "commit-later":
		// Wait for the order to commit (the parent stops this process in
		// between), then commit the intent.
		in.Scan()
		ok := *intent
		ok.Status = store.StatusOK
		err := s.Put(ctx, dom, &ok)
		uerr := unlock()
		if err != nil {
			fmt.Println("commit:", err, "; unlock:", uerr)
			os.Exit(3)
		}
		return nil
	}
	return fmt.Errorf("unknown mode %q", mode)
}

// startHelper re-runs the test binary in mode against srv.
func startHelper(t *testing.T, srv *etcdServer, mode, prefix string, ttl time.Duration) (*exec.Cmd, io.WriteCloser, *bufio.Scanner) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$")
	// GORACE: a race-enabled child would otherwise sleep a second at exit.
	cmd.Env = append(os.Environ(), envHelper+"="+mode, envEndpoint+"="+srv.endpoint(), envPrefix+"="+prefix,
		envTTL+"="+ttl.String(), "GORACE=atexit_sleep_ms=0")
	stderr := &lockedBuffer{}
	cmd.Stderr = stderr
	stdin, err := cmd.StdinPipe()
	must(t, err)
	stdout, err := cmd.StdoutPipe()
	must(t, err)
	must(t, cmd.Start())
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			syscall.Kill(cmd.Process.Pid, syscall.SIGKILL)
			cmd.Wait()
		}
	})
	out := bufio.NewScanner(stdout)
	if !out.Scan() || out.Text() != "locked" {
		t.Fatalf("helper did not lock: %q %s", out.Text(), stderr)
	}
	return cmd, stdin, out
}

// lockKeys returns the keys under the domain's lock prefix.
func lockKeys(t *testing.T, s *Store) []string {
	t.Helper()
	resp, err := s.cli.Get(testContext(t), s.lockPrefix(dom), clientv3.WithPrefix(), clientv3.WithKeysOnly())
	must(t, err)
	var keys []string
	for _, kv := range resp.Kvs {
		keys = append(keys, string(kv.Key))
	}
	return keys
}

// TestLockTwoHosts: two stores with their own clients ("hosts") contend
// for one domain: one wins, the other gets ErrBusy under its deadline and
// leaves no waiter key behind, then gets the lock once it is released.
func TestLockTwoHosts(t *testing.T) {
	srv := startEtcd(t)
	a := newStore(t, srv, Options{Prefix: "/hosts", LockTTL: 5 * time.Second, Holder: "host-a"})
	b := newStore(t, srv, Options{Prefix: "/hosts", LockTTL: 5 * time.Second, Holder: "host-b"})
	ctx := testContext(t)
	unlockA, err := a.Lock(ctx, dom)
	must(t, err)
	bctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	if u, err := b.Lock(bctx, dom); err == nil {
		u()
		t.Fatal("host b took the lock host a holds")
	} else if !errors.Is(err, store.ErrBusy) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("host b: err = %v, want ErrBusy and DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("host b gave up after %v, deadline 300ms", d)
	}
	if keys := lockKeys(t, a); len(keys) != 1 {
		t.Errorf("lock keys after host b gave up: %q, want host a's only", keys)
	}
	// Host b waits; host a writes, then unlocks; b then sees a's write.
	got := make(chan error, 1)
	go func() {
		u, err := b.Lock(ctx, dom)
		if err == nil {
			_, err = b.Get(ctx, dom, "from-a")
			u()
		}
		got <- err
	}()
	time.Sleep(100 * time.Millisecond)
	must(t, a.Put(ctx, dom, &store.Record{Name: "from-a"}))
	must(t, unlockA())
	select {
	case err := <-got:
		if err != nil {
			t.Fatalf("host b after a unlocked: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("host b did not get the lock after host a released it")
	}
	if keys := lockKeys(t, a); len(keys) != 0 {
		t.Errorf("lock keys left: %q", keys)
	}
}

// TestLockHolderKilled: SIGKILL of the process holding the lock frees it
// within the lock's TTL.
func TestLockHolderKilled(t *testing.T) {
	const ttl = 2 * time.Second
	srv := startEtcd(t)
	cmd, _, _ := startHelper(t, srv, "hold-lock", "/killed", ttl)
	s := newStore(t, srv, Options{Prefix: "/killed", LockTTL: ttl})
	ctx := testContext(t)
	short, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	if u, err := s.Lock(short, dom); !errors.Is(err, store.ErrBusy) {
		if err == nil {
			u()
		}
		t.Fatalf("Lock while the helper holds it: %v, want ErrBusy", err)
	}
	must(t, syscall.Kill(cmd.Process.Pid, syscall.SIGKILL))
	killed := time.Now()
	cmd.Wait()
	lctx, cancel := context.WithTimeout(ctx, ttl+2*time.Second)
	defer cancel()
	unlock, err := s.Lock(lctx, dom)
	if err != nil {
		t.Fatalf("lock not freed within the TTL (%v) + 2s after SIGKILL of its holder: %v", ttl, err)
	}
	freed := time.Since(killed)
	t.Logf("lock freed %v after SIGKILL of its holder (TTL %v)", freed.Round(time.Millisecond), ttl)
	if freed > ttl+time.Second {
		t.Errorf("lock freed %v after SIGKILL, TTL %v", freed, ttl)
	}
	// The dead holder's intent is there for the new holder's reconcile.
	r, err := s.Get(ctx, dom, "s1")
	if err != nil || r.Status != store.StatusCreating {
		t.Errorf("the killed holder's intent: %v, %v", r, err)
	}
	must(t, unlock())
}

// TestLockLeaseRevoked: a holder whose lease is revoked mid-operation
// cannot commit; the next holder finds its intent and settles it.
func TestLockLeaseRevoked(t *testing.T) {
	srv := startEtcd(t)
	admin := newClient(t, srv)
	a := newStore(t, srv, Options{Prefix: "/revoked", LockTTL: 10 * time.Second})
	b := newStore(t, srv, Options{Prefix: "/revoked", LockTTL: 10 * time.Second})
	ctx := testContext(t)
	unlockA, err := a.Lock(ctx, dom)
	must(t, err)
	intent := &store.Record{Name: "s1", Status: store.StatusCreating}
	must(t, a.Put(ctx, dom, intent))
	must(t, a.SetCurrent(ctx, dom, "s1"))

	f := a.heldFence(dom)
	if _, err := admin.Revoke(ctx, f.lease); err != nil {
		t.Fatal(err)
	}
	// Every kind of write from a is refused.
	commit := *intent
	commit.Status = store.StatusOK
	checks := map[string]error{
		"Put":          a.Put(ctx, dom, &commit),
		"SetCurrent":   a.SetCurrent(ctx, dom, ""),
		"Delete":       a.Delete(ctx, dom, "s1"),
		"store.Create": store.Create(ctx, a, dom, &store.Record{Name: "s2"}),
	}
	for op, err := range checks {
		if !errors.Is(err, ErrLockLost) {
			t.Errorf("%s after the lease was revoked: err = %v, want ErrLockLost", op, err)
		}
	}
	if err := unlockA(); !errors.Is(err, ErrLockLost) {
		t.Errorf("unlock after the lease was revoked: %v, want ErrLockLost", err)
	}
	// The next holder finds the intent untouched and settles it.
	unlockB, err := b.Lock(ctx, dom)
	must(t, err)
	r, err := b.Get(ctx, dom, "s1")
	if err != nil || r.Status != store.StatusCreating {
		t.Fatalf("intent after the refused commit: %+v, %v", r, err)
	}
	if _, err := b.Get(ctx, dom, "s2"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("s2 was created by a holder without the lock: %v", err)
	}
	must(t, store.RemoveAndReparent(ctx, b, dom, "s1"))
	must(t, unlockB())
	if rs, err := b.List(ctx, dom); err != nil || len(rs) != 0 {
		t.Errorf("after the settle: %v, %v", rs, err)
	}
}

// TestLockPausedHolder: a holder process paused (SIGSTOP) for longer than
// the TTL loses the lock; a second host takes it and writes; the first,
// resumed, cannot write over that.
func TestLockPausedHolder(t *testing.T) {
	const ttl = 2 * time.Second
	srv := startEtcd(t)
	cmd, stdin, out := startHelper(t, srv, "commit-later", "/paused", ttl)
	must(t, syscall.Kill(cmd.Process.Pid, syscall.SIGSTOP))
	t.Cleanup(func() { syscall.Kill(cmd.Process.Pid, syscall.SIGCONT) })
	s := newStore(t, srv, Options{Prefix: "/paused", LockTTL: ttl})
	ctx := testContext(t)
	lctx, cancel := context.WithTimeout(ctx, ttl+3*time.Second)
	defer cancel()
	unlock, err := s.Lock(lctx, dom)
	if err != nil {
		t.Fatalf("lock of a paused holder not freed within its TTL: %v", err)
	}
	must(t, s.Put(ctx, dom, &store.Record{Name: "s1", Description: "second host"}))
	must(t, syscall.Kill(cmd.Process.Pid, syscall.SIGCONT))
	fmt.Fprintln(stdin, "commit")
	var lines []string
	for out.Scan() {
		lines = append(lines, out.Text())
	}
	cmd.Wait()
	if code := cmd.ProcessState.ExitCode(); code != 3 || !strings.Contains(strings.Join(lines, "\n"), ErrLockLost.Error()) {
		t.Errorf("the resumed holder's commit: exit %d, said %q; want a refusal naming %q", code, lines, ErrLockLost)
	}
	r, err := s.Get(ctx, dom, "s1")
	if err != nil || r.Description != "second host" {
		t.Errorf("the second host's record after the first resumed: %+v, %v", r, err)
	}
	must(t, unlock())
}

// TestUnlockedWrites: writes without the lock work while another host
// holds it (the Store contract lets anyone Put), and a Store's writes for
// a domain whose lock it does not hold are not fenced.
func TestUnlockedWrites(t *testing.T) {
	srv := startEtcd(t)
	a := newStore(t, srv, Options{Prefix: "/unlocked"})
	b := newStore(t, srv, Options{Prefix: "/unlocked"})
	ctx := testContext(t)
	unlock, err := a.Lock(ctx, dom)
	must(t, err)
	defer unlock()
	must(t, b.Put(ctx, dom, &store.Record{Name: "x"}))
	must(t, b.SetCurrent(ctx, dom, "x"))
	must(t, a.Put(ctx, storetest.DomainB, &store.Record{Name: "y"}))
	if cur, err := a.Current(ctx, dom); err != nil || cur != "x" {
		t.Errorf("Current = %q, %v", cur, err)
	}
}

// TestCloseReleasesLocks: Close revokes the leases of the locks held.
func TestCloseReleasesLocks(t *testing.T) {
	srv := startEtcd(t)
	a, err := New(newClient(t, srv), Options{Prefix: "/close"})
	must(t, err)
	b := newStore(t, srv, Options{Prefix: "/close"})
	ctx := testContext(t)
	unlock, err := a.Lock(ctx, dom)
	must(t, err)
	must(t, a.Close())
	must(t, a.Close())
	if err := unlock(); err != nil {
		t.Errorf("unlock after Close: %v", err)
	}
	lctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	u, err := b.Lock(lctx, dom)
	if err != nil {
		t.Fatalf("lock after the holder's Close: %v", err)
	}
	u()
	if _, err := a.Lock(ctx, dom); err == nil {
		t.Error("Lock after Close succeeded")
	}
}
