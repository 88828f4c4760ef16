package store_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/vmsnap/vmsnap/internal/qemutest"
	"github.com/vmsnap/vmsnap/store"
	"github.com/vmsnap/vmsnap/store/storetest"
)

// fillDomain writes n realistic records straight to disk (without the
// per-write fsyncs, which only slow the setup).
func fillDomain(b *testing.B, n int) *store.FileStore {
	b.Helper()
	root := filepath.Join(b.TempDir(), "snapshots")
	s, err := store.NewFileStore(root)
	if err != nil {
		b.Fatal(err)
	}
	dir := filepath.Join(root, dom)
	if err := os.Mkdir(dir, 0o700); err != nil {
		b.Fatal(err)
	}
	for i := 0; i < n; i++ {
		r := storetest.Sample(fmt.Sprintf("snap-%05d", i), t0.Add(time.Duration(i)*time.Second))
		r.Config = []byte("name = \"vm1\"\nmemory = 1024\nvcpus = 2\ndisk = [ 'format=qcow2, vdev=xvda, target=/images/vm1.qcow2' ]\n")
		if i > 0 {
			r.Parent = fmt.Sprintf("snap-%05d", i-1)
		}
		data, err := store.Marshal(r)
		if err != nil {
			b.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, store.RecordFileName(r.Name)), data, 0o600); err != nil {
			b.Fatal(err)
		}
	}
	return s
}

// BenchmarkList10000 lists a domain with 10,000 snapshots (warm page
// cache), then builds its tree.
func BenchmarkList10000(b *testing.B) {
	s := fillDomain(b, 10000)
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	cpu0 := qemutest.ProcessCPU(b)
	for i := 0; i < b.N; i++ {
		rs, err := s.List(ctx, dom)
		if err != nil || len(rs) != 10000 {
			b.Fatalf("List = %d, %v", len(rs), err)
		}
	}
	// CPU time (user+system, all threads, GC included) per List: on a
	// shared machine it shows the cost when wall time is inflated by other
	// load.
	b.ReportMetric(float64(qemutest.ProcessCPU(b)-cpu0)/float64(b.N), "cpu-ns/op")
}

// BenchmarkGetAmong10000 looks one snapshot up in the same domain: one
// file is read, whatever the number of snapshots.
func BenchmarkGetAmong10000(b *testing.B) {
	s := fillDomain(b, 10000)
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := s.Get(ctx, dom, "snap-05000"); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkPut measures one durable write (two fsyncs).
func BenchmarkPut(b *testing.B) {
	s, err := store.NewFileStore(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	r := storetest.Sample("snap", t0)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := s.Put(context.Background(), dom, r); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkCommit compares the two ways of storing a finished snapshot
// and making it current: Put then SetCurrent (four flushes) and Commit
// (three, two of them concurrent). "create" adds the intent written
// before QEMU acts, so it is a whole create's store work.
func BenchmarkCommit(b *testing.B) {
	ctx := context.Background()
	for _, bc := range []struct {
		name   string
		intent bool
		commit func(s *store.FileStore, r *store.Record) error
	}{
		{"PutSetCurrent", false, func(s *store.FileStore, r *store.Record) error {
			if err := s.Put(ctx, dom, r); err != nil {
				return err
			}
			return s.SetCurrent(ctx, dom, r.Name)
		}},
		{"Commit", false, func(s *store.FileStore, r *store.Record) error { return s.Commit(ctx, dom, r, true) }},
		{"create/PutSetCurrent", true, func(s *store.FileStore, r *store.Record) error {
			if err := s.Put(ctx, dom, r); err != nil {
				return err
			}
			return s.SetCurrent(ctx, dom, r.Name)
		}},
		{"create/Commit", true, func(s *store.FileStore, r *store.Record) error { return s.Commit(ctx, dom, r, true) }},
	} {
		b.Run(bc.name, func(b *testing.B) {
			s, err := store.NewFileStore(b.TempDir())
			if err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				r := storetest.Sample(fmt.Sprintf("snap-%d", i), t0)
				if bc.intent {
					r.Status = store.StatusCreating
					if err := s.Put(ctx, dom, r); err != nil {
						b.Fatal(err)
					}
					r.Status = store.StatusOK
				}
				if err := bc.commit(s, r); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkUnmarshal(b *testing.B) {
	data, err := store.Marshal(storetest.Sample("snap", t0))
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		if _, err := store.Unmarshal(data); err != nil {
			b.Fatal(err)
		}
	}
}
