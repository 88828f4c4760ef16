package etcdstore

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/vmsnap/vmsnap/store"
	"github.com/vmsnap/vmsnap/store/storetest"
)

// The benchmarks compare this store, over loopback to an etcd started by
// the benchmark (fsync on, as deployed), with store.FileStore in a temp
// directory, in one run:
//
//	go test -run '^$' -bench . -benchtime 20x

const benchRecords = 10000

var benchT0 = time.Date(2026, 11, 26, 7, 0, 0, 0, time.UTC)

// BenchmarkList10000 lists a domain of 10,000 records (storetest.Sample,
// about 1 KiB of xl each).
func BenchmarkList10000(b *testing.B) {
	srv := startEtcd(b)
	ctx := context.Background()
	es := newStore(b, srv, Options{Prefix: "/bench"})
	fill(b, es, benchRecords)
	fs, err := store.NewFileStore(b.TempDir())
	must(b, err)
	fill(b, fs, benchRecords)
	for _, c := range []struct {
		name string
		s    store.Store
	}{{"etcd", es}, {"file", fs}} {
		b.Run(c.name, func(b *testing.B) {
			for b.Loop() {
				rs, err := c.s.List(ctx, dom)
				if err != nil || len(rs) != benchRecords {
					b.Fatalf("List: %d records, %v", len(rs), err)
				}
			}
		})
	}
}

// fill stores n sample records: for etcd in transactions of 100 puts, for
// files from 16 goroutines, so that setting up takes seconds.
func fill(b *testing.B, s store.Store, n int) {
	b.Helper()
	ctx := context.Background()
	if es, ok := s.(*Store); ok {
		for i := 0; i < n; i += 100 {
			var ops []clientv3.Op
			for j := i; j < i+100 && j < n; j++ {
				data, err := store.Marshal(storetest.Sample(fmt.Sprintf("snap-%05d", j), benchT0.Add(time.Duration(j)*time.Second)))
				must(b, err)
				ops = append(ops, clientv3.OpPut(es.recordKey(dom, fmt.Sprintf("snap-%05d", j)), string(data)))
			}
			_, err := es.cli.Txn(ctx).Then(ops...).Commit()
			must(b, err)
		}
		return
	}
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for w := 0; w < 16; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := w; j < n; j += 16 {
				if err := s.Put(ctx, dom, storetest.Sample(fmt.Sprintf("snap-%05d", j), benchT0.Add(time.Duration(j)*time.Second))); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
}

// BenchmarkCreateMetadata is the store work of one snapshot create, as
// the engine does it: lock, read the domain (reconcile), check the name is
// free and store the intent, commit the record, make it current, unlock.
// The domain holds 10 snapshots.
func BenchmarkCreateMetadata(b *testing.B) {
	srv := startEtcd(b)
	es := newStore(b, srv, Options{Prefix: "/bench"})
	fs, err := store.NewFileStore(b.TempDir())
	must(b, err)
	for _, c := range []struct {
		name string
		s    store.Store
	}{{"etcd", es}, {"file", fs}} {
		fill(b, c.s, 10)
		b.Run(c.name, func(b *testing.B) {
			ctx := context.Background()
			i := 0
			for b.Loop() {
				i++
				r := storetest.Sample(fmt.Sprintf("new-%d", i), benchT0.Add(time.Duration(i)*time.Hour))
				if err := createMetadata(ctx, c.s, r); err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				if err := c.s.Delete(ctx, dom, r.Name); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
			}
		})
	}
}

func createMetadata(ctx context.Context, s store.Store, r *store.Record) error {
	unlock, err := s.Lock(ctx, dom)
	if err != nil {
		return err
	}
	defer unlock()
	if _, err := s.List(ctx, dom); err != nil {
		return err
	}
	if _, err := s.Current(ctx, dom); err != nil {
		return err
	}
	r.Status = store.StatusCreating
	if err := store.Create(ctx, s, dom, r); err != nil {
		return err
	}
	r.Status = store.StatusOK
	if err := s.Put(ctx, dom, r); err != nil {
		return err
	}
	if err := s.SetCurrent(ctx, dom, r.Name); err != nil {
		return err
	}
	return unlock()
}
