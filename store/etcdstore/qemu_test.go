package etcdstore

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/vmsnap/vmsnap"
	"github.com/vmsnap/vmsnap/internal/qemutest"
	"github.com/vmsnap/vmsnap/qmp"
	"github.com/vmsnap/vmsnap/store"
)

// The engine on real QEMU with its metadata in etcd: the same guarantees
// as with the file store.

// hookStore calls hook before and after each Put; a hook may block, to
// hold an operation at a chosen point (and be killed there).
type hookStore struct {
	store.Store
	hook func(r *store.Record, after bool)
}

func (h *hookStore) Put(ctx context.Context, domain string, r *store.Record) error {
	h.hook(r, false)
	err := h.Store.Put(ctx, domain, r)
	if err == nil {
		h.hook(r, true)
	}
	return err
}

func guestRunning(t *testing.T, vm *qemutest.VM) bool {
	t.Helper()
	st, err := qmp.QueryStatus(testContext(t), vm.Mon)
	must(t, err)
	return st.Running
}

func guestCounter(t *testing.T, vm *qemutest.VM) uint64 {
	t.Helper()
	c, err := vm.Counter(testContext(t))
	must(t, err)
	return c
}

// advances reports whether the guest's counter moves.
func advances(t *testing.T, vm *qemutest.VM) bool {
	t.Helper()
	a := guestCounter(t, vm)
	time.Sleep(200 * time.Millisecond)
	return guestCounter(t, vm) > a
}

func hasTag(t *testing.T, vm *qemutest.VM, tag string) (all, any bool) {
	t.Helper()
	all = true
	for _, d := range vm.Disks {
		has := slices.Contains(qemutest.ImgSnapshots(t, d.File), tag)
		all = all && has
		any = any || has
	}
	return all, any
}

// listing runs the next operation on dom (Reconcile, as every mutating
// operation does first; List only reads) and lists.
func listing(t *testing.T, dom *vmsnap.Domain) *vmsnap.Listing {
	t.Helper()
	ctx := testContext(t)
	must(t, dom.Reconcile(ctx))
	l, err := dom.List(ctx, 0).Wait(ctx)
	must(t, err)
	return l
}

func names(l *vmsnap.Listing) []string {
	var out []string
	for _, s := range l.Snapshots {
		out = append(out, s.Name)
	}
	return out
}

// TestQEMUEngine: create, list, revert and delete on a real guest, with the
// records in etcd, readable there as xl text and seen by a second host.
func TestQEMUEngine(t *testing.T) {
	qemutest.Require(t)
	srv := startEtcd(t)
	vm := qemutest.Start(t, qemutest.Options{})
	ctx := testContext(t)
	s := newStore(t, srv, Options{Prefix: "/engine", LockTTL: 5 * time.Second})
	dom, err := vmsnap.Open(ctx, vm.Mon, vmsnap.Options{Store: s, MemoryDir: t.TempDir()})
	must(t, err)

	must(t, vm.Mon.Execute(ctx, "stop", nil, nil))
	atSnapshot := guestCounter(t, vm)
	s1, err := dom.Create(ctx, vmsnap.CreateSpec{Name: "s1", Description: "full"}, 0).Wait(ctx)
	must(t, err)
	if !s1.Current || len(s1.Disks) != 2 || s1.Memory.Kind != vmsnap.MemoryInternal {
		t.Fatalf("s1 = %+v", s1)
	}
	if all, _ := hasTag(t, vm, "s1"); !all {
		t.Fatal("s1 is not on every disk")
	}
	must(t, vm.Mon.Execute(ctx, "cont", nil, nil))
	s2, err := dom.Create(ctx, vmsnap.CreateSpec{Name: "s2"}, vmsnap.DiskOnly).Wait(ctx)
	must(t, err)
	if s2.Parent != "s1" || !s2.IsDiskOnly() {
		t.Errorf("s2 = %+v, want a disk-only child of s1", s2)
	}

	// The record is the file store's xl text, under the documented key.
	resp, err := s.Client().Get(ctx, "/engine/"+vm.UUID+"/snapshots/s1")
	must(t, err)
	if len(resp.Kvs) != 1 || !strings.Contains(string(resp.Kvs[0].Value), `name = "s1"`) || !strings.Contains(string(resp.Kvs[0].Value), `status = "ok"`) {
		t.Errorf("etcd key of s1: %q", resp.Kvs)
	} else if _, err := store.Unmarshal(resp.Kvs[0].Value); err != nil {
		t.Errorf("the etcd value is not a record store.Unmarshal reads: %v", err)
	}

	// A second host sees the same catalog.
	other := newStore(t, srv, Options{Prefix: "/engine"})
	rs, err := other.List(ctx, vm.UUID)
	if err != nil || len(rs) != 2 {
		t.Errorf("second host's List: %d records, %v", len(rs), err)
	}
	if cur, _ := other.Current(ctx, vm.UUID); cur != "s2" {
		t.Errorf("second host's Current = %q, want s2", cur)
	}

	l := listing(t, dom)
	if got := names(l); !slices.Equal(got, []string{"s1", "s2"}) || l.Current != "s2" {
		t.Errorf("List = %q, current %q", got, l.Current)
	}
	for _, sn := range l.Snapshots {
		if len(sn.Problems) > 0 {
			t.Errorf("%s: problems %q", sn.Name, sn.Problems)
		}
	}

	if _, err := dom.Revert(ctx, "s1", vmsnap.RevertPaused).Wait(ctx); err != nil {
		t.Fatal(err)
	}
	if got := guestCounter(t, vm); got != atSnapshot || guestRunning(t, vm) {
		t.Errorf("after revert: counter %d (want %d), running %v", got, atSnapshot, guestRunning(t, vm))
	}
	if cur, _ := other.Current(ctx, vm.UUID); cur != "s1" {
		t.Errorf("Current after revert = %q, want s1", cur)
	}
	must(t, vm.Mon.Execute(ctx, "cont", nil, nil))

	deleted, err := dom.Delete(ctx, "s2", 0).Wait(ctx)
	must(t, err)
	if !slices.Equal(deleted, []string{"s2"}) {
		t.Errorf("Delete(s2) = %q", deleted)
	}
	if _, any := hasTag(t, vm, "s2"); any {
		t.Error("s2 is still on a disk")
	}
	if _, err := other.Get(ctx, vm.UUID, "s2"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("s2's record after delete: %v", err)
	}
	if got := names(listing(t, dom)); !slices.Equal(got, []string{"s1"}) {
		t.Errorf("List after delete = %q", got)
	}
}

// The killed-create test runs this helper in a child process: it binds
// the domain through its own monitor socket and creates s1, with a store
// that stops at the chosen point and says so; the parent kills it there.
const (
	envQEMUHelper = "ETCDSTORE_TEST_QEMU_HELPER"
	envSocket     = "ETCDSTORE_TEST_SOCKET"
	envMemoryDir  = "ETCDSTORE_TEST_MEMORY_DIR"
)

func TestQEMUHelperProcess(t *testing.T) {
	stopAt := os.Getenv(envQEMUHelper)
	if stopAt == "" {
		t.Skip("helper process for the real-QEMU tests")
	}
	if err := qemuHelper(stopAt); err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

func qemuHelper(stopAt string) error {
	ctx := context.Background()
	ttl, err := time.ParseDuration(os.Getenv(envTTL))
	if err != nil {
		return err
	}
	es, err := Open(ctx, clientv3.Config{Endpoints: []string{os.Getenv(envEndpoint)}}, Options{Prefix: os.Getenv(envPrefix), LockTTL: ttl})
	if err != nil {
		return err
	}
	mon, err := qmp.Dial(ctx, "unix:"+os.Getenv(envSocket))
	if err != nil {
		return err
	}
	hs := &hookStore{Store: es, hook: func(r *store.Record, after bool) {
		if (stopAt == "after-intent" && after && r.Status == store.StatusCreating) ||
			(stopAt == "before-commit" && !after && r.Status == store.StatusOK) {
			fmt.Println("stopped", stopAt)
			select {}
		}
	}}
	dom, err := vmsnap.Open(ctx, mon, vmsnap.Options{Store: hs, MemoryDir: os.Getenv(envMemoryDir)})
	if err != nil {
		return err
	}
	_, err = dom.Create(ctx, vmsnap.CreateSpec{Name: "s1"}, 0).Wait(ctx)
	if err == nil {
		err = errors.New("the create finished: the stop point was never reached")
	}
	return err
}

// TestQEMUKilledMidCreate: the process creating a snapshot is killed
// (SIGKILL) after its intent is stored, or after QEMU took the snapshot
// but before the commit; a second client on another etcd connection waits
// for the dead holder's lease to expire, and its reconcile settles the
// intent: no record, no disk snapshot and the guest running in the first
// case; the snapshot committed, on every disk, in the second.
func TestQEMUKilledMidCreate(t *testing.T) {
	qemutest.Require(t)
	for _, stopAt := range []string{"after-intent", "before-commit"} {
		t.Run(stopAt, func(t *testing.T) {
			const ttl = 2 * time.Second
			srv := startEtcd(t)
			sockDir, err := os.MkdirTemp("", "etcdstore")
			must(t, err)
			t.Cleanup(func() { os.RemoveAll(sockDir) })
			sock := filepath.Join(sockDir, "child.sock")
			vm := qemutest.Start(t, qemutest.Options{ExtraArgs: []string{"-qmp", "unix:" + sock + ",server=on,wait=off"}})
			memDir := t.TempDir()
			prefix := "/killed-create"

			cmd := exec.Command(os.Args[0], "-test.run=^TestQEMUHelperProcess$")
			cmd.Env = append(os.Environ(), envQEMUHelper+"="+stopAt, envEndpoint+"="+srv.endpoint(), envPrefix+"="+prefix,
				envTTL+"="+ttl.String(), envSocket+"="+sock, envMemoryDir+"="+memDir, "GORACE=atexit_sleep_ms=0")
			stderr := &lockedBuffer{}
			cmd.Stderr = stderr
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
			if !out.Scan() || out.Text() != "stopped "+stopAt {
				t.Fatalf("helper: %q\n%s", out.Text(), stderr)
			}
			must(t, syscall.Kill(cmd.Process.Pid, syscall.SIGKILL))
			killed := time.Now()
			cmd.Wait()

			ctx := testContext(t)
			s := newStore(t, srv, Options{Prefix: prefix, LockTTL: ttl})
			r, err := s.Get(ctx, vm.UUID, "s1")
			if err != nil || r.Status != store.StatusCreating {
				t.Fatalf("the killed create's record: %+v, %v; want its intent", r, err)
			}
			dom, err := vmsnap.Open(ctx, vm.Mon, vmsnap.Options{Store: s, MemoryDir: memDir})
			must(t, err)
			l := listing(t, dom)
			t.Logf("second client listed %v after the SIGKILL (lock TTL %v)", time.Since(killed).Round(time.Millisecond), ttl)
			all, any := hasTag(t, vm, "s1")
			switch stopAt {
			case "after-intent":
				if len(l.Snapshots) != 0 || any {
					t.Errorf("after reconcile: records %q, s1 on a disk %v; want neither", names(l), any)
				}
			case "before-commit":
				if got := names(l); !slices.Equal(got, []string{"s1"}) || !all || len(l.Snapshots[0].Problems) > 0 {
					t.Errorf("after reconcile: records %q, s1 on every disk %v, problems %v; want s1 committed", got, all, l.Snapshots)
				}
				if r, err := s.Get(ctx, vm.UUID, "s1"); err != nil || r.Status != store.StatusOK {
					t.Errorf("s1's record after reconcile: %+v, %v", r, err)
				}
			}
			if !guestRunning(t, vm) || !advances(t, vm) {
				t.Error("the guest does not run after the reconcile")
			}
		})
	}
}

// TestQEMUEtcdStopped: etcd stops while a snapshot is being created (QEMU
// has taken it, the commit is next). The create fails with an error
// wrapping ErrUnavailable, the guest runs as before; once etcd is back, a
// second client's reconcile leaves records and disks in agreement.
func TestQEMUEtcdStopped(t *testing.T) {
	qemutest.Require(t)
	const ttl = 2 * time.Second
	srv := startEtcd(t)
	vm := qemutest.Start(t, qemutest.Options{})
	ctx := testContext(t)
	memDir := t.TempDir()
	es := newStore(t, srv, Options{Prefix: "/stopped", LockTTL: ttl, RequestTimeout: time.Second})
	hs := &hookStore{Store: es, hook: func(r *store.Record, after bool) {
		if !after && r.Status == store.StatusOK {
			srv.stop()
		}
	}}
	dom, err := vmsnap.Open(ctx, vm.Mon, vmsnap.Options{Store: hs, MemoryDir: memDir})
	must(t, err)
	start := time.Now()
	_, err = dom.Create(ctx, vmsnap.CreateSpec{Name: "s1"}, 0).Wait(ctx)
	t.Logf("create with etcd stopped before its commit: %v (after %v)", err, time.Since(start).Round(time.Millisecond))
	if !errors.Is(err, ErrUnavailable) {
		t.Errorf("create: err = %v, want ErrUnavailable", err)
	}
	if !guestRunning(t, vm) || !advances(t, vm) {
		t.Error("the guest does not run after the failed create")
	}

	srv.restart()
	s := newStore(t, srv, Options{Prefix: "/stopped", LockTTL: ttl})
	dom2, err := vmsnap.Open(ctx, vm.Mon, vmsnap.Options{Store: s, MemoryDir: memDir})
	must(t, err)
	l := listing(t, dom2)
	all, any := hasTag(t, vm, "s1")
	switch got := names(l); {
	case slices.Equal(got, []string{"s1"}) && all && len(l.Snapshots[0].Problems) == 0:
		t.Log("reconciled: s1 committed")
	case len(got) == 0 && !any:
		t.Log("reconciled: s1 rolled back")
	default:
		t.Errorf("after etcd came back: records %q, s1 on every disk %v, on some %v, snapshots %+v", got, all, any, l.Snapshots)
	}
	if !guestRunning(t, vm) {
		t.Error("the guest does not run after the reconcile")
	}
}

// TestQEMUStorageElsewhere: the catalog is shared but the images are not.
// A second "host" runs the domain (same UUID) on images of its own; its
// List shows the snapshot the first host took, with a problem saying its
// disks do not hold it, rather than hiding it or claiming it can be used;
// its revert is refused and the images of the first host are never
// touched.
func TestQEMUStorageElsewhere(t *testing.T) {
	qemutest.Require(t)
	srv := startEtcd(t)
	ctx := testContext(t)
	here := qemutest.Start(t, qemutest.Options{})
	s := newStore(t, srv, Options{Prefix: "/elsewhere"})
	dom, err := vmsnap.Open(ctx, here.Mon, vmsnap.Options{Store: s, MemoryDir: t.TempDir()})
	must(t, err)
	if _, err := dom.Create(ctx, vmsnap.CreateSpec{Name: "s1"}, 0).Wait(ctx); err != nil {
		t.Fatal(err)
	}

	there := qemutest.Start(t, qemutest.Options{UUID: here.UUID})
	s2 := newStore(t, srv, Options{Prefix: "/elsewhere"})
	dom2, err := vmsnap.Open(ctx, there.Mon, vmsnap.Options{Store: s2, MemoryDir: t.TempDir()})
	must(t, err)
	l := listing(t, dom2)
	if got := names(l); !slices.Equal(got, []string{"s1"}) {
		t.Fatalf("other host's List = %q, want s1", got)
	}
	if len(l.Snapshots[0].Problems) == 0 {
		t.Errorf("other host's List reports no problem with a snapshot whose images it does not have")
	}
	t.Logf("other host sees s1 with problems %q", l.Snapshots[0].Problems)
	if _, err := dom2.Revert(ctx, "s1", 0).Wait(ctx); err == nil {
		t.Error("the other host reverted to a snapshot its images do not hold")
	} else {
		t.Logf("other host's revert: %v", err)
	}
	if !guestRunning(t, there) || !advances(t, there) {
		t.Error("the other host's guest does not run after the refused revert")
	}
	deleted, err := dom2.Delete(ctx, "s1", 0).Wait(ctx)
	t.Logf("other host's delete: %q, %v", deleted, err)
	if all, _ := hasTag(t, here, "s1"); !all {
		t.Error("the other host's delete removed s1 from images it does not run on")
	}
	// Today the engine takes disks that do not hold a snapshot as disks
	// it is gone from, so that delete dropped the shared record; the first
	// host still finds s1 in its images, as untracked, and can adopt it.
	l = listing(t, dom)
	var untracked []string
	for _, u := range l.Untracked {
		untracked = append(untracked, u.Name)
	}
	if err == nil && !slices.Contains(untracked, "s1") {
		t.Errorf("first host after the other's delete: records %q, untracked %q; want s1 untracked", names(l), untracked)
	}
}
