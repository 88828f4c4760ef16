package vmsnap_test

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/vmsnap/vmsnap"
	"github.com/vmsnap/vmsnap/internal/qemutest"
	"github.com/vmsnap/vmsnap/qmp"
	"github.com/vmsnap/vmsnap/store"
)

// BenchmarkFullInternalSnapshot compares a full internal snapshot taken
// through vmsnap (lock, reconcile, intent, snapshot-save job, read-back,
// commit) with the same snapshot-save sent raw on a second QMP monitor of
// the same guest, interleaved in alternating order so both see the same
// machine, each snapshot deleted (outside the timing) before the next is
// taken, so both save into images in the same state. Two guests: the idle
// 64 MiB counter guest (whose save takes milliseconds, so vmsnap's fixed
// cost shows) and one with 128 MiB of random data in RAM (a save that
// writes real memory).
//
// Besides the means it reports medians of per-iteration values (robust to
// a busy moment of the shared machine in one of the two runs): the ratio,
// the overhead, and where the overhead goes, from the create's phases
// (Options.Events): before the intent (lock, reconcile, QEMU's disks and
// run state, the name and current snapshot in the store), the intent, the
// save minus the raw sequence (the same job and three commands), after the
// save (read-back) and the commit; with the time the store's two durable
// writes took (the intent's Put and the Commit, both fsynced) and the QMP
// commands vmsnap sent per snapshot (the raw sequence sends three:
// snapshot-save, query-jobs, job-dismiss).
func BenchmarkFullInternalSnapshot(b *testing.B) {
	b.Run("idle-64MiB", func(b *testing.B) { benchFullInternal(b, qemutest.Options{}) })
	b.Run("loaded-128MiB", func(b *testing.B) {
		blob := filepath.Join(b.TempDir(), "ram.bin")
		qemutest.WriteRandom(b, blob, 128<<20)
		benchFullInternal(b, qemutest.Options{MemoryMiB: 256, DiskSize: "512M", Loaders: []qemutest.Loader{{File: blob, Addr: 0x1000000}}})
	})
}

// timedStore is a FileStore that sums the time spent in its durable
// writes of a create: the intent's Put and the Commit.
type timedStore struct {
	*store.FileStore
	puts, commits atomic.Int64 // nanoseconds
}

var _ store.Committer = (*timedStore)(nil)

func (s *timedStore) Put(ctx context.Context, domain string, r *store.Record) error {
	defer func(t0 time.Time) { s.puts.Add(int64(time.Since(t0))) }(time.Now())
	return s.FileStore.Put(ctx, domain, r)
}

func (s *timedStore) Commit(ctx context.Context, domain string, r *store.Record, makeCurrent bool) error {
	defer func(t0 time.Time) { s.commits.Add(int64(time.Since(t0))) }(time.Now())
	return s.FileStore.Commit(ctx, domain, r, makeCurrent)
}

// countingMonitor counts the commands sent through it.
type countingMonitor struct {
	qmp.Monitor
	n atomic.Int64
}

func (m *countingMonitor) Execute(ctx context.Context, command string, args, result any) error {
	m.n.Add(1)
	return m.Monitor.Execute(ctx, command, args, result)
}

func benchFullInternal(b *testing.B, opts qemutest.Options) {
	dir := b.TempDir()
	rawSock := filepath.Join(dir, "raw.sock")
	opts.ExtraArgs = append(opts.ExtraArgs, "-qmp", "unix:"+rawSock+",server=on,wait=off")
	vm := qemutest.Start(b, opts)
	ctx := context.Background()
	fs, err := store.NewFileStore(filepath.Join(dir, "store"))
	if err != nil {
		b.Fatal(err)
	}
	ts := &timedStore{FileStore: fs}
	mon := &countingMonitor{Monitor: vm.Mon}
	// The phases of the create being timed, as Options.Events reports
	// them (synchronously, from the operation's goroutine).
	var (
		phaseMu sync.Mutex
		phases  []vmsnap.Event
	)
	events := func(ev vmsnap.Event) {
		if ev.Kind == vmsnap.EventPhase && ev.Op == "create" {
			phaseMu.Lock()
			phases = append(phases, ev)
			phaseMu.Unlock()
		}
	}
	dom, err := vmsnap.Open(ctx, mon, vmsnap.Options{Store: ts, Events: events})
	if err != nil {
		b.Fatal(err)
	}
	raw := qemutest.DialRaw(b, rawSock)
	devices := []string{vm.Disks[0].Node, vm.Disks[1].Node}
	// Each iteration times one raw snapshot and one taken through vmsnap,
	// in alternating order, each deleted outside the timing and the
	// filesystems synced after the delete, so that neither inherits the
	// writeback of the previous one (an fsync of a record can wait for it).
	// One sample per iteration; the metrics are medians, except the means
	// raw-ms/op and vmsnap-ms/op and their ratio.
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	rawSnapshot := func(i int) time.Duration {
		tag := fmt.Sprintf("raw%d", i)
		t0 := time.Now()
		raw.Job(b, "snapshot-save", "save-"+tag, map[string]any{"tag": tag, "vmstate": devices[0], "devices": devices})
		d := time.Since(t0)
		b.StopTimer()
		raw.Job(b, "snapshot-delete", "del-"+tag, map[string]any{"tag": tag, "devices": devices})
		syscall.Sync()
		b.StartTimer()
		return d
	}
	// A create's phases: before the intent (lock, reconcile, the reads),
	// the intent, the save, after the save (read-back, resume check), the
	// commit. The save is compared with the raw sequence (same job, same
	// three commands).
	type libSample struct {
		total, put, commit                       time.Duration
		beforeIntent, intent, save, after, final time.Duration
	}
	var (
		rawTime, libTime time.Duration
		samples          = map[string][]float64{}
		cmds             int64
	)
	libSnapshot := func(i int) libSample {
		name := fmt.Sprintf("lib%d", i)
		ts.puts.Store(0)
		ts.commits.Store(0)
		phaseMu.Lock()
		phases = phases[:0]
		phaseMu.Unlock()
		n0 := mon.n.Load()
		t0 := time.Now()
		if _, err := dom.Create(ctx, vmsnap.CreateSpec{Name: name}, 0).Wait(ctx); err != nil {
			b.Fatal(err)
		}
		end := time.Now()
		cmds += mon.n.Load() - n0
		ls := libSample{total: end.Sub(t0), put: time.Duration(ts.puts.Load()), commit: time.Duration(ts.commits.Load())}
		phaseMu.Lock()
		var at []time.Time // writing metadata, saving memory, committed, writing metadata
		want := []vmsnap.Phase{vmsnap.PhaseWritingMeta, vmsnap.PhaseSavingMemory, vmsnap.PhaseCommitted, vmsnap.PhaseWritingMeta}
		for _, ev := range phases {
			if len(at) < len(want) && ev.Phase == want[len(at)] {
				at = append(at, ev.Time)
			}
		}
		phaseMu.Unlock()
		if len(at) != len(want) {
			b.Fatalf("create's phases: %v", phases)
		}
		ls.beforeIntent, ls.intent, ls.save, ls.after, ls.final = at[0].Sub(t0), at[1].Sub(at[0]), at[2].Sub(at[1]), at[3].Sub(at[2]), end.Sub(at[3])
		b.StopTimer()
		if _, err := dom.Delete(ctx, name, 0).Wait(ctx); err != nil {
			b.Fatal(err)
		}
		syscall.Sync()
		b.StartTimer()
		return ls
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		var r time.Duration
		var l libSample
		if i%2 == 0 {
			r = rawSnapshot(i)
			l = libSnapshot(i)
		} else {
			l = libSnapshot(i)
			r = rawSnapshot(i)
		}
		rawTime += r
		libTime += l.total
		for k, v := range map[string]float64{
			"median-vmsnap/raw":        float64(l.total) / float64(r),
			"median-overhead-ms":       ms(l.total - r),
			"median-before-intent-ms":  ms(l.beforeIntent),
			"median-intent-ms":         ms(l.intent),
			"median-save-minus-raw-ms": ms(l.save - r),
			"median-after-save-ms":     ms(l.after),
			"median-commit-ms":         ms(l.final),
			"median-store-put-ms":      ms(l.put),
			"median-store-commit-ms":   ms(l.commit),
		} {
			samples[k] = append(samples[k], v)
		}
	}
	b.StopTimer()
	n := float64(b.N)
	b.ReportMetric(ms(rawTime)/n, "raw-ms/op")
	b.ReportMetric(ms(libTime)/n, "vmsnap-ms/op")
	b.ReportMetric(float64(libTime)/float64(rawTime), "vmsnap/raw")
	for k, v := range samples {
		b.ReportMetric(qemutest.Median(v), k)
	}
	b.ReportMetric(float64(cmds)/n, "qmp-cmds/op")
}

// BenchmarkRevertInternal measures a revert of a full internal snapshot of
// a guest with 128 MiB of random data in RAM: snapshot-load in the running
// QEMU, no restart.
func BenchmarkRevertInternal(b *testing.B) {
	blob := filepath.Join(b.TempDir(), "ram.bin")
	qemutest.WriteRandom(b, blob, 128<<20)
	vm := qemutest.Start(b, qemutest.Options{MemoryMiB: 256, DiskSize: "512M", Loaders: []qemutest.Loader{{File: blob, Addr: 0x1000000}}})
	ctx := context.Background()
	fs, err := store.NewFileStore(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	dom, err := vmsnap.Open(ctx, vm.Mon, vmsnap.Options{Store: fs})
	if err != nil {
		b.Fatal(err)
	}
	if _, err := dom.Create(ctx, vmsnap.CreateSpec{Name: "r"}, 0).Wait(ctx); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := dom.Revert(ctx, "r", vmsnap.RevertRunning).Wait(ctx); err != nil {
			b.Fatal(err)
		}
	}
}
