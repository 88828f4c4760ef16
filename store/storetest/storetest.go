// Package storetest is a conformance suite for store.Store implementations.
// A toolstack that keeps snapshot metadata in its own database runs it from
// a test:
//
//	func TestMyStore(t *testing.T) {
//		storetest.Run(t, func(t *testing.T) store.Store { return newMyStore(t) })
//	}
//
// Every test gets a fresh, empty store from the factory. The optional
// store.Committer capability is tested when the store has it.
package storetest

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/vmsnap/vmsnap/store"
)

// Domains used by the suite.
const (
	DomainA = "5c84adcc-bd59-788a-96d2-195f9b599cfe"
	DomainB = "00000000-0000-0000-0000-000000000001"
)

// RecordOptions compare records: empty and nil maps, slices and byte
// slices are equal (times compare with time.Time.Equal).
var RecordOptions = cmp.Options{cmpopts.EquateEmpty()}

// Run runs the whole suite against stores made by newStore.
func Run(t *testing.T, newStore func(t *testing.T) store.Store) {
	tests := []struct {
		name string
		fn   func(*testing.T, store.Store)
	}{
		{"PutGet", testPutGet},
		{"Missing", testMissing},
		{"Replace", testReplace},
		{"ListOrder", testListOrder},
		{"DomainsIsolated", testDomainsIsolated},
		{"InvalidNames", testInvalidNames},
		{"InvalidDomains", testInvalidDomains},
		{"InvalidRecords", testInvalidRecords},
		{"HostileBytes", testHostileBytes},
		{"Current", testCurrent},
		{"LockExclusive", testLockExclusive},
		{"LockDeadline", testLockDeadline},
		{"LockNoLostUpdate", testLockNoLostUpdate},
		{"Create", testCreate},
		{"RemoveAndReparent", testRemoveAndReparent},
		{"RemoveAndReparentKeepsOthers", testRemoveAndReparentKeepsOthers},
		{"CanceledContext", testCanceledContext},
		{"Commit", testCommit},
		{"CommitCurrentIsStored", testCommitCurrentIsStored},
		{"Stage", testStage},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, newStore(t)) })
	}
}

// Sample returns a record with every field set, named name, created at t.
func Sample(name string, t time.Time) *store.Record {
	return &store.Record{
		FormatVersion: store.CurrentFormatVersion,
		Name:          name,
		Description:   "before upgrading \"glibc\"\n\tsecond line \\ done",
		CreationTime:  t,
		State:         "running",
		Status:        store.StatusOK,
		Memory:        store.Memory{Kind: "external", File: "/var/lib/xen/snapshots/" + DomainA + "/" + name + ".save"},
		Disks: []store.Disk{
			{Device: "virtio0", Node: "drive0", File: "/images/a b.qcow2", Kind: "internal", ID: "1", Tag: name,
				VMStateSize: 123456789, Date: t.Add(-time.Second), VMClock: 90*time.Minute + 5},
			{Device: "virtio1", Node: "drive1", File: "/images/data.qcow2", Kind: "external", Overlay: "/images/data." + name + ".qcow2",
				Date: t, Removed: true},
		},
		Downtime: 12 * time.Millisecond,
		Labels:   map[string]string{"owner": "ops", "ticket": "T-1=2"},
		Config:   []byte("name = \"vm1\"\nmemory = 256\ndisk = [ 'format=qcow2, vdev=xvda, target=/images/a b.qcow2' ]\n"),
		Extra:    map[string]string{"future_key": `[ "x", 1 ]`},
	}
}

var t0 = time.Date(2026, 11, 26, 7, 0, 0, 123456789, time.UTC)

func mustPut(t *testing.T, s store.Store, domain string, r *store.Record) {
	t.Helper()
	if err := s.Put(context.Background(), domain, r); err != nil {
		t.Fatalf("Put(%s, %q): %v", domain, r.Name, err)
	}
}

func names(rs []*store.Record) []string {
	out := []string{}
	for _, r := range rs {
		out = append(out, r.Name)
	}
	return out
}

func testPutGet(t *testing.T, s store.Store) {
	ctx := context.Background()
	want := Sample("before-upgrade", t0.In(time.FixedZone("X", 3600)))
	mustPut(t, s, DomainA, want)
	got, err := s.Get(ctx, DomainA, "before-upgrade")
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	if diff := cmp.Diff(want, got, RecordOptions); diff != "" {
		t.Errorf("Get after Put (-want +got):\n%s", diff)
	}
	if got.CreationTime.Location() != time.UTC {
		t.Errorf("CreationTime location = %v, want UTC", got.CreationTime.Location())
	}
	got.Description = "changed by the caller"
	again, err := s.Get(ctx, DomainA, "before-upgrade")
	if err != nil {
		t.Fatal(err)
	}
	if again.Description != want.Description {
		t.Errorf("changing a returned record changed the store: %q", again.Description)
	}
	// A zero FormatVersion is stored as the current one.
	r := &store.Record{Name: "minimal"}
	mustPut(t, s, DomainA, r)
	got, err = s.Get(ctx, DomainA, "minimal")
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(&store.Record{Name: "minimal", FormatVersion: store.CurrentFormatVersion}, got, RecordOptions); diff != "" {
		t.Errorf("minimal record (-want +got):\n%s", diff)
	}
}

func testMissing(t *testing.T, s store.Store) {
	ctx := context.Background()
	if _, err := s.Get(ctx, DomainA, "nope"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Get missing: err = %v, want ErrNotFound", err)
	}
	if err := s.Delete(ctx, DomainA, "nope"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Delete missing: err = %v, want ErrNotFound", err)
	}
	if err := s.SetCurrent(ctx, DomainA, "nope"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("SetCurrent missing: err = %v, want ErrNotFound", err)
	}
	rs, err := s.List(ctx, DomainA)
	if err != nil || len(rs) != 0 {
		t.Errorf("List empty domain = %v, %v; want none, nil", names(rs), err)
	}
	cur, err := s.Current(ctx, DomainA)
	if err != nil || cur != "" {
		t.Errorf("Current empty domain = %q, %v; want \"\", nil", cur, err)
	}
	mustPut(t, s, DomainA, Sample("x", t0))
	if err := s.Delete(ctx, DomainA, "x"); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	if _, err := s.Get(ctx, DomainA, "x"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Get after Delete: err = %v, want ErrNotFound", err)
	}
	if err := s.Delete(ctx, DomainA, "x"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("second Delete: err = %v, want ErrNotFound", err)
	}
}

func testReplace(t *testing.T, s store.Store) {
	ctx := context.Background()
	r := Sample("s", t0)
	r.Status = store.StatusCreating
	mustPut(t, s, DomainA, r)
	r2 := Sample("s", t0)
	r2.Status = store.StatusOK
	r2.Disks = r2.Disks[:1]
	r2.Extra = nil
	mustPut(t, s, DomainA, r2)
	got, err := s.Get(ctx, DomainA, "s")
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(r2, got, RecordOptions); diff != "" {
		t.Errorf("replaced record (-want +got):\n%s", diff)
	}
	rs, err := s.List(ctx, DomainA)
	if err != nil || len(rs) != 1 {
		t.Errorf("List after replace = %v, %v; want one record", names(rs), err)
	}
}

func testListOrder(t *testing.T, s store.Store) {
	ctx := context.Background()
	in := []struct {
		name string
		at   time.Time
	}{
		{"c", t0.Add(time.Nanosecond)},
		{"b", t0},
		{"a", t0},
		{"z", t0.Add(-time.Hour)},
		{"epoch", time.Time{}},
	}
	for _, x := range in {
		mustPut(t, s, DomainA, &store.Record{Name: x.name, CreationTime: x.at})
	}
	rs, err := s.List(ctx, DomainA)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"epoch", "z", "a", "b", "c"}, names(rs)); diff != "" {
		t.Errorf("List order (-want +got):\n%s", diff)
	}
}

func testDomainsIsolated(t *testing.T, s store.Store) {
	ctx := context.Background()
	mustPut(t, s, DomainA, Sample("same", t0))
	b := Sample("same", t0)
	b.Description = "domain b"
	mustPut(t, s, DomainB, b)
	if err := s.SetCurrent(ctx, DomainA, "same"); err != nil {
		t.Fatal(err)
	}
	if cur, _ := s.Current(ctx, DomainB); cur != "" {
		t.Errorf("Current(B) = %q after SetCurrent(A)", cur)
	}
	if err := s.Delete(ctx, DomainA, "same"); err != nil {
		t.Fatal(err)
	}
	got, err := s.Get(ctx, DomainB, "same")
	if err != nil || got.Description != "domain b" {
		t.Errorf("Get(B) after Delete(A) = %v, %v", got, err)
	}
}

// BadNames are names every Store must refuse.
var BadNames = []string{
	"", ".", "..", ".hidden", "a/b", "/abs", "../escape", "a\x00b", "tab\there", "new\nline",
	"del\x7f", "c1\u0085", " lead", "trail ", "nbsp\u00a0", "zero\u200bwidth", "bad\xffutf8",
	stringOf('a', store.MaxNameLen+1), stringOf(0, 3), "../../../../etc/passwd", "a/../../b",
}

// GoodNames are names every Store must accept and keep apart.
var GoodNames = []string{
	"1397207577", "a", "a..b", "a%2Fb", "a%", "with space", "üñïçødé", "日本語のスナップショット",
	"quote\"'`", "back\\slash", "-dash", "_under", "~tilde", "a:b@c+d=e,f;g", stringOf('m', store.MaxNameLen),
	"%41", "A", "emoji-\U0001F600",
}

func stringOf(c byte, n int) string {
	b := make([]byte, n)
	for i := range b {
		b[i] = c
	}
	return string(b)
}

func testInvalidNames(t *testing.T, s store.Store) {
	ctx := context.Background()
	for _, name := range BadNames {
		if err := s.Put(ctx, DomainA, &store.Record{Name: name}); !errors.Is(err, store.ErrInvalidName) {
			t.Errorf("Put(%q): err = %v, want ErrInvalidName", name, err)
		}
		if _, err := s.Get(ctx, DomainA, name); !errors.Is(err, store.ErrInvalidName) {
			t.Errorf("Get(%q): err = %v, want ErrInvalidName", name, err)
		}
		if err := s.Delete(ctx, DomainA, name); !errors.Is(err, store.ErrInvalidName) {
			t.Errorf("Delete(%q): err = %v, want ErrInvalidName", name, err)
		}
		if name != "" {
			if err := s.SetCurrent(ctx, DomainA, name); !errors.Is(err, store.ErrInvalidName) {
				t.Errorf("SetCurrent(%q): err = %v, want ErrInvalidName", name, err)
			}
		}
		if err := s.Put(ctx, DomainA, &store.Record{Name: "ok", Parent: name}); name != "" && !errors.Is(err, store.ErrInvalidName) {
			t.Errorf("Put(parent %q): err = %v, want ErrInvalidName", name, err)
		}
		if name == "" {
			if err := s.Delete(ctx, DomainA, "ok"); err != nil {
				t.Errorf("Delete(ok): %v", err)
			}
		}
	}
	rs, err := s.List(ctx, DomainA)
	if err != nil || len(rs) != 0 {
		t.Errorf("after refused names, List = %v, %v; want nothing stored", names(rs), err)
	}
	for i, name := range GoodNames {
		r := &store.Record{Name: name, Description: strconv.Itoa(i)}
		mustPut(t, s, DomainA, r)
	}
	for i, name := range GoodNames {
		got, err := s.Get(ctx, DomainA, name)
		if err != nil {
			t.Errorf("Get(%q): %v", name, err)
			continue
		}
		if got.Name != name || got.Description != strconv.Itoa(i) {
			t.Errorf("Get(%q) = record %q, description %q: names collide", name, got.Name, got.Description)
		}
	}
	rs, err = s.List(ctx, DomainA)
	if err != nil || len(rs) != len(GoodNames) {
		t.Errorf("List = %d records, %v; want %d", len(rs), err, len(GoodNames))
	}
}

// BadDomains are domain UUIDs every Store must refuse.
var BadDomains = []string{
	"", "..", "/", "5c84adcc-bd59-788a-96d2-195f9b599cf", "5c84adcc-bd59-788a-96d2-195f9b599cfe0",
	"5C84ADCC-BD59-788A-96D2-195F9B599CFE", "5c84adcc_bd59_788a_96d2_195f9b599cfe", "5c84adccbd59788a96d2195f9b599cfe",
	"../4adcc-bd59-788a-96d2-195f9b599cfe", "5c84adcc-bd59-788a-96d2-195f9b599cf/", "5c84adcc-bd59-788a-96d2-195f9b599cg",
	"5c84adcc-bd59-788a-96d2-195f9b599c\x00e", "{5c84adc-bd59-788a-96d2-195f9b599cfe}",
}

func testInvalidDomains(t *testing.T, s store.Store) {
	ctx := context.Background()
	for _, d := range BadDomains {
		checks := map[string]error{}
		checks["Put"] = s.Put(ctx, d, &store.Record{Name: "a"})
		_, checks["Get"] = s.Get(ctx, d, "a")
		checks["Delete"] = s.Delete(ctx, d, "a")
		_, checks["List"] = s.List(ctx, d)
		_, checks["Current"] = s.Current(ctx, d)
		checks["SetCurrent"] = s.SetCurrent(ctx, d, "a")
		unlock, err := s.Lock(ctx, d)
		if unlock != nil {
			unlock()
		}
		checks["Lock"] = err
		for op, err := range checks {
			if !errors.Is(err, store.ErrInvalidDomain) {
				t.Errorf("%s(%q): err = %v, want ErrInvalidDomain", op, d, err)
			}
		}
	}
}

func testInvalidRecords(t *testing.T, s store.Store) {
	ctx := context.Background()
	bad := map[string]*store.Record{
		"nil":                nil,
		"self parent":        {Name: "a", Parent: "a"},
		"label with =":       {Name: "a", Labels: map[string]string{"k=v": "x"}},
		"empty label":        {Name: "a", Labels: map[string]string{"": "x"}},
		"extra not ident":    {Name: "a", Extra: map[string]string{"Bad-Key": `"x"`}},
		"extra known key":    {Name: "a", Extra: map[string]string{"description": `"x"`}},
		"extra disk key":     {Name: "a", Extra: map[string]string{"disk_0_device": `"x"`}},
		"extra raw garbage":  {Name: "a", Extra: map[string]string{"k": `"x" # trailing`}},
		"extra raw newline":  {Name: "a", Extra: map[string]string{"k": "\"x\"\ny = 1"}},
		"extra raw empty":    {Name: "a", Extra: map[string]string{"k": ""}},
		"negative downtime":  {Name: "a", Downtime: -1},
		"negative vm clock":  {Name: "a", Disks: []store.Disk{{VMClock: -1}}},
		"year 10000":         {Name: "a", CreationTime: time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)},
		"negative version":   {Name: "a", FormatVersion: -1},
		"too many disks":     {Name: "a", Disks: make([]store.Disk, store.MaxDisks+1)},
		"disk date year -1":  {Name: "a", Disks: []store.Disk{{Date: time.Date(-1, 1, 1, 0, 0, 0, 0, time.UTC)}}},
		"extra unterminated": {Name: "a", Extra: map[string]string{"k": `[ "x"`}},
	}
	for what, r := range bad {
		err := s.Put(ctx, DomainA, r)
		if !errors.Is(err, store.ErrInvalidRecord) && !errors.Is(err, store.ErrInvalidName) {
			t.Errorf("Put(%s): err = %v, want ErrInvalidRecord", what, err)
		}
	}
	rs, err := s.List(ctx, DomainA)
	if err != nil || len(rs) != 0 {
		t.Errorf("after refused records, List = %v, %v; want nothing stored", names(rs), err)
	}
}

func testHostileBytes(t *testing.T, s store.Store) {
	ctx := context.Background()
	all := make([]byte, 0, 512)
	for i := 0; i < 256; i++ {
		all = append(all, byte(i))
	}
	all = append(all, "\"'\\\\n\\x41\xe2\x80\xa8\xef\xbf\xbd\xc0\xaf end"...)
	r := &store.Record{
		Name:        "hostile",
		Description: string(all),
		State:       "a = \"b\"\nname = \"evil\"",
		Parent:      "p\"arent",
		Status:      store.Status("future-\x00-status"),
		Memory:      store.Memory{Kind: "\\", Node: "#comment", File: "[ list ]"},
		Disks:       []store.Disk{{Device: "'", Tag: "\n", ID: ";"}},
		Labels:      map[string]string{"k\n": "v\"", "k]": string(all)},
		Config:      all,
	}
	mustPut(t, s, DomainA, r)
	got, err := s.Get(ctx, DomainA, "hostile")
	if err != nil {
		t.Fatal(err)
	}
	want := *r
	want.FormatVersion = store.CurrentFormatVersion
	if diff := cmp.Diff(&want, got, RecordOptions); diff != "" {
		t.Errorf("hostile bytes round trip (-want +got):\n%s", diff)
	}
}

func testCurrent(t *testing.T, s store.Store) {
	ctx := context.Background()
	mustPut(t, s, DomainA, Sample("one", t0))
	mustPut(t, s, DomainA, Sample("two", t0))
	steps := []struct {
		set  string
		want string
	}{{"one", "one"}, {"two", "two"}, {"", ""}, {"one", "one"}}
	for _, st := range steps {
		if err := s.SetCurrent(ctx, DomainA, st.set); err != nil {
			t.Fatalf("SetCurrent(%q): %v", st.set, err)
		}
		if got, err := s.Current(ctx, DomainA); err != nil || got != st.want {
			t.Errorf("Current after SetCurrent(%q) = %q, %v; want %q", st.set, got, err, st.want)
		}
	}
	if err := s.Delete(ctx, DomainA, "two"); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.Current(ctx, DomainA); got != "one" {
		t.Errorf("deleting another snapshot changed current to %q", got)
	}
	if err := s.Delete(ctx, DomainA, "one"); err != nil {
		t.Fatal(err)
	}
	if got, err := s.Current(ctx, DomainA); err != nil || got != "" {
		t.Errorf("Current after deleting the current snapshot = %q, %v; want none", got, err)
	}
}

func testLockExclusive(t *testing.T, s store.Store) {
	ctx := context.Background()
	unlock, err := s.Lock(ctx, DomainA)
	if err != nil {
		t.Fatalf("Lock: %v", err)
	}
	// Another domain is independent.
	unlockB, err := s.Lock(ctx, DomainB)
	if err != nil {
		t.Fatalf("Lock(B) while A is held: %v", err)
	}
	if err := unlockB(); err != nil {
		t.Fatal(err)
	}
	acquired := make(chan func() error)
	go func() {
		u, err := s.Lock(ctx, DomainA)
		if err != nil {
			t.Errorf("second Lock: %v", err)
			close(acquired)
			return
		}
		acquired <- u
	}()
	select {
	case <-acquired:
		t.Fatal("second Lock succeeded while the first was held")
	case <-time.After(100 * time.Millisecond):
	}
	if err := unlock(); err != nil {
		t.Fatal(err)
	}
	if err := unlock(); err != nil {
		t.Errorf("second unlock: %v", err)
	}
	select {
	case u := <-acquired:
		if u != nil {
			u()
		}
	case <-time.After(5 * time.Second):
		t.Fatal("second Lock not granted after unlock")
	}
}

func testLockDeadline(t *testing.T, s store.Store) {
	unlock, err := s.Lock(context.Background(), DomainA)
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	u, err := s.Lock(ctx, DomainA)
	if err == nil {
		u()
		t.Fatal("Lock succeeded while held")
	}
	if !errors.Is(err, store.ErrBusy) || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Lock past deadline: err = %v, want ErrBusy and DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Lock took %v to give up after a 50ms deadline", d)
	}
}

func testLockNoLostUpdate(t *testing.T, s store.Store) {
	const goroutines, rounds = 4, 15
	ctx := context.Background()
	mustPut(t, s, DomainA, &store.Record{Name: "counter", Labels: map[string]string{"n": "0"}})
	var wg sync.WaitGroup
	for g := 0; g < goroutines; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < rounds; i++ {
				if err := increment(ctx, s, DomainA); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	r, err := s.Get(ctx, DomainA, "counter")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := r.Labels["n"], strconv.Itoa(goroutines*rounds); got != want {
		t.Errorf("counter = %s after %s locked increments: lost updates", got, want)
	}
}

// increment adds one to the "n" label of the "counter" record under the
// domain's lock.
func increment(ctx context.Context, s store.Store, domain string) error {
	unlock, err := s.Lock(ctx, domain)
	if err != nil {
		return err
	}
	defer unlock()
	r, err := s.Get(ctx, domain, "counter")
	if err != nil {
		return err
	}
	n, err := strconv.Atoi(r.Labels["n"])
	if err != nil {
		return fmt.Errorf("counter label: %w", err)
	}
	r.Labels["n"] = strconv.Itoa(n + 1)
	return s.Put(ctx, domain, r)
}

func testCreate(t *testing.T, s store.Store) {
	ctx := context.Background()
	if err := store.Create(ctx, s, DomainA, Sample("c", t0)); err != nil {
		t.Fatal(err)
	}
	other := Sample("c", t0)
	other.Description = "second"
	if err := store.Create(ctx, s, DomainA, other); !errors.Is(err, store.ErrExists) {
		t.Errorf("Create existing: err = %v, want ErrExists", err)
	}
	got, err := s.Get(ctx, DomainA, "c")
	if err != nil || got.Description == "second" {
		t.Errorf("Create existing overwrote the record: %v, %v", got, err)
	}
}

func testRemoveAndReparent(t *testing.T, s store.Store) {
	ctx := context.Background()
	// root -> mid -> {leaf1, leaf2}; mid is current.
	for i, r := range []*store.Record{
		{Name: "root"}, {Name: "mid", Parent: "root"}, {Name: "leaf1", Parent: "mid"}, {Name: "leaf2", Parent: "mid"}, {Name: "other", Parent: "root"},
	} {
		r.CreationTime = t0.Add(time.Duration(i) * time.Second)
		mustPut(t, s, DomainA, r)
	}
	if err := s.SetCurrent(ctx, DomainA, "mid"); err != nil {
		t.Fatal(err)
	}
	if err := store.RemoveAndReparent(ctx, s, DomainA, "mid"); err != nil {
		t.Fatalf("RemoveAndReparent: %v", err)
	}
	rs, err := s.List(ctx, DomainA)
	if err != nil {
		t.Fatal(err)
	}
	parents := map[string]string{}
	for _, r := range rs {
		parents[r.Name] = r.Parent
	}
	want := map[string]string{"root": "", "leaf1": "root", "leaf2": "root", "other": "root"}
	if diff := cmp.Diff(want, parents); diff != "" {
		t.Errorf("parents after removing mid (-want +got):\n%s", diff)
	}
	if cur, err := s.Current(ctx, DomainA); err != nil || cur != "root" {
		t.Errorf("Current = %q, %v; want root (the removed snapshot's parent)", cur, err)
	}
	tree := store.BuildTree(rs)
	if d := tree.Dangling(); len(d) != 0 {
		t.Errorf("dangling after RemoveAndReparent: %v", d)
	}
	// Removing a root makes its children roots.
	if err := store.RemoveAndReparent(ctx, s, DomainA, "root"); err != nil {
		t.Fatal(err)
	}
	rs, _ = s.List(ctx, DomainA)
	if diff := cmp.Diff([]string{"leaf1", "leaf2", "other"}, store.BuildTree(rs).Roots()); diff != "" {
		t.Errorf("roots after removing the root (-want +got):\n%s", diff)
	}
	if cur, _ := s.Current(ctx, DomainA); cur != "" {
		t.Errorf("Current = %q after removing the current root; want none", cur)
	}
	if err := store.RemoveAndReparent(ctx, s, DomainA, "root"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("RemoveAndReparent missing: err = %v, want ErrNotFound", err)
	}
}

// testRemoveAndReparentKeepsOthers: re-parenting changes only the
// children's Parent; grandchildren and unrelated records stay as they were.
func testRemoveAndReparentKeepsOthers(t *testing.T, s store.Store) {
	ctx := context.Background()
	// root -> mid -> child -> grandchild; root -> other.
	var all []*store.Record
	for i, x := range []struct{ name, parent string }{
		{"root", ""}, {"mid", "root"}, {"child", "mid"}, {"grandchild", "child"}, {"other", "root"},
	} {
		r := Sample(x.name, t0.Add(time.Duration(i)*time.Second))
		r.Parent = x.parent
		mustPut(t, s, DomainA, r)
		all = append(all, r)
	}
	if err := store.RemoveAndReparent(ctx, s, DomainA, "mid"); err != nil {
		t.Fatalf("RemoveAndReparent: %v", err)
	}
	for _, want := range all {
		got, err := s.Get(ctx, DomainA, want.Name)
		if want.Name == "mid" {
			if !errors.Is(err, store.ErrNotFound) {
				t.Errorf("Get(mid) after removing it: %v, want ErrNotFound", err)
			}
			continue
		}
		if err != nil {
			t.Errorf("Get(%s): %v", want.Name, err)
			continue
		}
		if want.Name == "child" {
			w := *want
			w.Parent = "root"
			want = &w
		}
		if diff := cmp.Diff(want, got, RecordOptions); diff != "" {
			t.Errorf("record %s after removing mid (-want +got):\n%s", want.Name, diff)
		}
	}
}

func testCanceledContext(t *testing.T, s store.Store) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := s.Put(ctx, DomainA, &store.Record{Name: "a"}); !errors.Is(err, context.Canceled) {
		t.Errorf("Put with canceled ctx: err = %v", err)
	}
	if _, err := s.List(ctx, DomainA); !errors.Is(err, context.Canceled) {
		t.Errorf("List with canceled ctx: err = %v", err)
	}
	if _, err := s.Lock(ctx, DomainA); !errors.Is(err, store.ErrBusy) || !errors.Is(err, context.Canceled) {
		t.Errorf("Lock with canceled ctx: err = %v, want ErrBusy and Canceled", err)
	}
	rs, err := s.List(context.Background(), DomainA)
	if err != nil || len(rs) != 0 {
		t.Errorf("a Put with a canceled ctx stored something: %v, %v", names(rs), err)
	}
}

// committer returns s as a store.Committer, or skips the test.
func committer(t *testing.T, s store.Store) store.Committer {
	c, ok := s.(store.Committer)
	if !ok {
		t.Skipf("%T does not implement store.Committer", s)
	}
	return c
}

func testCommit(t *testing.T, s store.Store) {
	c := committer(t, s)
	ctx := context.Background()
	get := func(name string) *store.Record {
		t.Helper()
		r, err := s.Get(ctx, DomainA, name)
		if err != nil {
			t.Fatalf("Get(%q): %v", name, err)
		}
		return r
	}
	current := func(want string) {
		t.Helper()
		if got, err := s.Current(ctx, DomainA); err != nil || got != want {
			t.Errorf("Current = %q, %v; want %q", got, err, want)
		}
	}

	// A new record, made current.
	one := Sample("one", t0)
	if err := c.Commit(ctx, DomainA, one, true); err != nil {
		t.Fatalf("Commit(one, current): %v", err)
	}
	if diff := cmp.Diff(one, get("one"), RecordOptions); diff != "" {
		t.Errorf("record after Commit (-want +got):\n%s", diff)
	}
	current("one")

	// Without makeCurrent the current snapshot stays.
	two := Sample("two", t0.Add(time.Second))
	two.Status = store.StatusCreating
	if err := c.Commit(ctx, DomainA, two, false); err != nil {
		t.Fatalf("Commit(two): %v", err)
	}
	current("one")

	// Replacing an intent record, as an engine commits it.
	two.Status = store.StatusOK
	two.Parent = "one"
	if err := c.Commit(ctx, DomainA, two, true); err != nil {
		t.Fatalf("Commit(two, current): %v", err)
	}
	if diff := cmp.Diff(two, get("two"), RecordOptions); diff != "" {
		t.Errorf("replaced record after Commit (-want +got):\n%s", diff)
	}
	current("two")

	// Refused writes change nothing.
	bad := Sample("three", t0)
	bad.Parent = "three"
	if err := c.Commit(ctx, DomainA, bad, true); !errors.Is(err, store.ErrInvalidRecord) {
		t.Errorf("Commit of a record that is its own parent: err = %v, want ErrInvalidRecord", err)
	}
	if err := c.Commit(ctx, "not a domain", Sample("three", t0), true); !errors.Is(err, store.ErrInvalidDomain) {
		t.Errorf("Commit to an invalid domain: err = %v, want ErrInvalidDomain", err)
	}
	if err := c.Commit(ctx, DomainA, &store.Record{Name: "a/b"}, true); !errors.Is(err, store.ErrInvalidName) {
		t.Errorf("Commit of an invalid name: err = %v, want ErrInvalidName", err)
	}
	canceled, cancel := context.WithCancel(ctx)
	cancel()
	if err := c.Commit(canceled, DomainA, Sample("three", t0), true); !errors.Is(err, context.Canceled) {
		t.Errorf("Commit with a canceled ctx: err = %v", err)
	}
	current("two")
	rs, err := s.List(ctx, DomainA)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := names(rs), []string{"one", "two"}; !cmp.Equal(got, want) {
		t.Errorf("records after refused Commits = %v, want %v", got, want)
	}

	// The helper gives the same result through the capability and
	// through Put then SetCurrent.
	if err := store.Commit(ctx, s, DomainA, Sample("four", t0), true); err != nil {
		t.Fatalf("store.Commit: %v", err)
	}
	current("four")
	if err := store.Commit(ctx, struct{ store.Store }{s}, DomainA, Sample("five", t0), true); err != nil {
		t.Fatalf("store.Commit without the capability: %v", err)
	}
	current("five")
	get("five")
}

// testCommitCurrentIsStored commits while readers watch: whenever the
// current snapshot names a record, that record can be read.
func testCommitCurrentIsStored(t *testing.T, s store.Store) {
	c := committer(t, s)
	ctx := context.Background()
	rounds := 30
	done := make(chan struct{})
	var wg sync.WaitGroup
	for i := 0; i < 2; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-done:
					return
				default:
				}
				cur, err := s.Current(ctx, DomainA)
				if err != nil {
					t.Errorf("Current: %v", err)
					return
				}
				if cur == "" {
					continue
				}
				if _, err := s.Get(ctx, DomainA, cur); err != nil {
					t.Errorf("current snapshot %q cannot be read: %v", cur, err)
					return
				}
			}
		}()
	}
	for i := 0; i < rounds; i++ {
		if err := c.Commit(ctx, DomainA, Sample("snap-"+strconv.Itoa(i), t0), true); err != nil {
			t.Errorf("Commit %d: %v", i, err)
			break
		}
	}
	close(done)
	wg.Wait()
}

// testStage checks store.Stage (the store's Stager, or Put): a staged
// record is read back at once, a commit replaces it, and what Put refuses
// Stage refuses, storing nothing.
func testStage(t *testing.T, s store.Store) {
	ctx := context.Background()
	r := Sample("staged", t0)
	r.Status = store.StatusCreating
	if err := store.Stage(ctx, s, DomainA, r); err != nil {
		t.Fatal(err)
	}
	got, err := s.Get(ctx, DomainA, "staged")
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(r, got, RecordOptions); diff != "" {
		t.Errorf("staged record (-want +got):\n%s", diff)
	}
	done := Sample("staged", t0)
	done.Status = store.StatusOK
	if err := store.Commit(ctx, s, DomainA, done, true); err != nil {
		t.Fatal(err)
	}
	if got, err := s.Get(ctx, DomainA, "staged"); err != nil || got.Status != store.StatusOK {
		t.Errorf("after commit: %v, %v; want the committed record", got, err)
	}
	if cur, err := s.Current(ctx, DomainA); err != nil || cur != "staged" {
		t.Errorf("current after commit = %q, %v", cur, err)
	}
	for what, bad := range map[string]*store.Record{
		"self parent": {Name: "a", Parent: "a"},
		"bad name":    {Name: "../a"},
	} {
		if err := store.Stage(ctx, s, DomainA, bad); !errors.Is(err, store.ErrInvalidRecord) && !errors.Is(err, store.ErrInvalidName) {
			t.Errorf("Stage(%s): err = %v, want ErrInvalidRecord or ErrInvalidName", what, err)
		}
	}
	if err := store.Stage(ctx, s, "not-a-uuid", Sample("x", t0)); !errors.Is(err, store.ErrInvalidDomain) {
		t.Errorf("Stage in an invalid domain: err = %v, want ErrInvalidDomain", err)
	}
	if rs, err := s.List(ctx, DomainA); err != nil || len(rs) != 1 {
		t.Errorf("List = %v, %v; want only the committed record", names(rs), err)
	}
}
