package vmsnap_test

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vmsnap/vmsnap"
	"github.com/vmsnap/vmsnap/internal/qemutest"
	"github.com/vmsnap/vmsnap/qmp"
	"github.com/vmsnap/vmsnap/store"
)

// rawQMP is the minimal hand-written QMP loop the benchmark compares with:
// one JSON line out, lines in until the wanted one.
type rawQMP struct {
	conn net.Conn
	r    *bufio.Reader
}

func dialRaw(tb testing.TB, path string) *rawQMP {
	tb.Helper()
	c, err := net.Dial("unix", path)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close() })
	q := &rawQMP{conn: c, r: bufio.NewReaderSize(c, 1<<16)}
	q.line(tb) // greeting
	q.call(tb, `{"execute":"qmp_capabilities"}`)
	return q
}

func (q *rawQMP) line(tb testing.TB) []byte {
	l, err := q.r.ReadBytes('\n')
	if err != nil {
		tb.Fatal(err)
	}
	return l
}

// call sends cmd and reads until its return (events are skipped).
func (q *rawQMP) call(tb testing.TB, cmd string) {
	if _, err := q.conn.Write([]byte(cmd + "\n")); err != nil {
		tb.Fatal(err)
	}
	for {
		l := q.line(tb)
		if strings.Contains(string(l), `"error"`) {
			tb.Fatalf("%s: %s", cmd, l)
		}
		if strings.HasPrefix(string(l), `{"return"`) {
			return
		}
	}
}

// job runs a snapshot job the way a hand-written client would: start it,
// wait for its concluded event, read query-jobs, dismiss it.
func (q *rawQMP) job(tb testing.TB, command, id string, args map[string]any) {
	args["job-id"] = id
	b, _ := json.Marshal(map[string]any{"execute": command, "arguments": args})
	q.call(tb, string(b))
	want := fmt.Sprintf(`"status": "concluded", "id": %q`, id)
	for {
		if l := q.line(tb); strings.Contains(string(l), want) {
			break
		}
	}
	q.call(tb, `{"execute":"query-jobs"}`)
	q.call(tb, fmt.Sprintf(`{"execute":"job-dismiss","arguments":{"id":%q}}`, id))
}

// BenchmarkFullInternalSnapshot compares a full internal snapshot taken
// through vmsnap (lock, reconcile, intent, snapshot-save job, read-back,
// commit) with the same snapshot-save sent raw on a second QMP monitor of
// the same guest, interleaved in alternating order so both see the same
// machine, each snapshot deleted (outside the timing) before the next is
// taken, so both save into images in the same state. Two guests: the idle 64 MiB counter guest
// (whose save takes milliseconds, so vmsnap's fixed cost shows) and one
// with 128 MiB of random data in RAM (a save that writes real memory).
//
// Besides the means it reports medians of per-iteration values (robust to
// a busy moment of the shared machine in one of the two runs): the ratio,
// the overhead, the time vmsnap spent in the store's two durable writes
// (the intent's Put and the Commit, both fsynced), the overhead besides all
// store calls (QMP round trips and vmsnap's own work), and the QMP commands
// vmsnap sent per snapshot (the raw sequence sends three: snapshot-save,
// query-jobs, job-dismiss).
func BenchmarkFullInternalSnapshot(b *testing.B) {
	b.Run("idle-64MiB", func(b *testing.B) { benchFullInternal(b, qemutest.Options{}) })
	b.Run("loaded-128MiB", func(b *testing.B) {
		blob := filepath.Join(b.TempDir(), "ram.bin")
		writeRandom(b, blob, 128<<20)
		benchFullInternal(b, qemutest.Options{MemoryMiB: 256, DiskSize: "512M", Loaders: []qemutest.Loader{{File: blob, Addr: 0x1000000}}})
	})
}

// writeRandom writes size bytes of incompressible data to path and
// flushes them to disk, so that their writeback does not land in the
// middle of what the caller measures (on ext4 an fsync of a small file can
// wait for another file's data).
func writeRandom(tb testing.TB, path string, size int) {
	tb.Helper()
	buf := make([]byte, size)
	if _, err := rand.Read(buf); err != nil {
		tb.Fatal(err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		tb.Fatal(err)
	}
	_, err = f.Write(buf)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		tb.Fatal(err)
	}
}

// timedStore is a FileStore that sums the time spent in its writes and
// reads.
type timedStore struct {
	*store.FileStore
	puts, commits, otherWrites, reads atomic.Int64 // nanoseconds
}

var _ store.Committer = (*timedStore)(nil)

func (s *timedStore) since(sum *atomic.Int64, t0 time.Time) { sum.Add(int64(time.Since(t0))) }

func (s *timedStore) Lock(ctx context.Context, domain string) (func() error, error) {
	defer s.since(&s.reads, time.Now())
	return s.FileStore.Lock(ctx, domain)
}

func (s *timedStore) Put(ctx context.Context, domain string, r *store.Record) error {
	defer s.since(&s.puts, time.Now())
	return s.FileStore.Put(ctx, domain, r)
}

func (s *timedStore) Commit(ctx context.Context, domain string, r *store.Record, makeCurrent bool) error {
	defer s.since(&s.commits, time.Now())
	return s.FileStore.Commit(ctx, domain, r, makeCurrent)
}

func (s *timedStore) SetCurrent(ctx context.Context, domain, name string) error {
	defer s.since(&s.otherWrites, time.Now())
	return s.FileStore.SetCurrent(ctx, domain, name)
}

func (s *timedStore) Delete(ctx context.Context, domain, name string) error {
	defer s.since(&s.otherWrites, time.Now())
	return s.FileStore.Delete(ctx, domain, name)
}

func (s *timedStore) Get(ctx context.Context, domain, name string) (*store.Record, error) {
	defer s.since(&s.reads, time.Now())
	return s.FileStore.Get(ctx, domain, name)
}

func (s *timedStore) List(ctx context.Context, domain string) ([]*store.Record, error) {
	defer s.since(&s.reads, time.Now())
	return s.FileStore.List(ctx, domain)
}

func (s *timedStore) Current(ctx context.Context, domain string) (string, error) {
	defer s.since(&s.reads, time.Now())
	return s.FileStore.Current(ctx, domain)
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
	dom, err := vmsnap.Open(ctx, mon, vmsnap.Options{Store: ts})
	if err != nil {
		b.Fatal(err)
	}
	raw := dialRaw(b, rawSock)
	devices := []string{vm.Disks[0].Node, vm.Disks[1].Node}
	// Each iteration times one raw snapshot and one taken through vmsnap,
	// in alternating order (whichever goes first may inherit the
	// writeback of the previous delete), each deleted outside the timing.
	// One sample per iteration; the metrics are medians, except the means
	// raw-ms/op and vmsnap-ms/op and their ratio.
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	rawSnapshot := func(i int) time.Duration {
		tag := fmt.Sprintf("raw%d", i)
		t0 := time.Now()
		raw.job(b, "snapshot-save", "save-"+tag, map[string]any{"tag": tag, "vmstate": devices[0], "devices": devices})
		d := time.Since(t0)
		b.StopTimer()
		raw.job(b, "snapshot-delete", "del-"+tag, map[string]any{"tag": tag, "devices": devices})
		b.StartTimer()
		return d
	}
	var (
		rawTime, libTime                          time.Duration
		ratios, overheads, puts, commits, besides []float64
		cmds                                      int64
	)
	libSnapshot := func(i int) (d, put, commit, inStore time.Duration) {
		name := fmt.Sprintf("lib%d", i)
		for _, v := range []*atomic.Int64{&ts.puts, &ts.commits, &ts.otherWrites, &ts.reads} {
			v.Store(0)
		}
		n0 := mon.n.Load()
		t0 := time.Now()
		if _, err := dom.Create(ctx, vmsnap.CreateSpec{Name: name}, 0).Wait(ctx); err != nil {
			b.Fatal(err)
		}
		d = time.Since(t0)
		cmds += mon.n.Load() - n0
		put, commit = time.Duration(ts.puts.Load()), time.Duration(ts.commits.Load())
		inStore = put + commit + time.Duration(ts.otherWrites.Load()+ts.reads.Load())
		b.StopTimer()
		if _, err := dom.Delete(ctx, name, 0).Wait(ctx); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		return d, put, commit, inStore
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		var r, l, put, commit, inStore time.Duration
		if i%2 == 0 {
			r = rawSnapshot(i)
			l, put, commit, inStore = libSnapshot(i)
		} else {
			l, put, commit, inStore = libSnapshot(i)
			r = rawSnapshot(i)
		}
		rawTime += r
		libTime += l
		ratios = append(ratios, float64(l)/float64(r))
		overheads = append(overheads, ms(l-r))
		puts = append(puts, ms(put))
		commits = append(commits, ms(commit))
		besides = append(besides, ms(l-r-inStore))
	}
	b.StopTimer()
	n := float64(b.N)
	b.ReportMetric(ms(rawTime)/n, "raw-ms/op")
	b.ReportMetric(ms(libTime)/n, "vmsnap-ms/op")
	b.ReportMetric(float64(libTime)/float64(rawTime), "vmsnap/raw")
	b.ReportMetric(median(ratios), "median-vmsnap/raw")
	b.ReportMetric(median(overheads), "median-overhead-ms")
	b.ReportMetric(median(puts), "median-store-put-ms")
	b.ReportMetric(median(commits), "median-store-commit-ms")
	b.ReportMetric(median(besides), "median-overhead-besides-store-ms")
	b.ReportMetric(float64(cmds)/n, "qmp-cmds/op")
}

// median returns the median of v (which it sorts).
func median(v []float64) float64 {
	slices.Sort(v)
	if len(v)%2 == 1 {
		return v[len(v)/2]
	}
	return (v[len(v)/2-1] + v[len(v)/2]) / 2
}

// BenchmarkRevertInternal measures a revert of a full internal snapshot of
// a guest with 128 MiB of random data in RAM: snapshot-load in the running
// QEMU, no restart.
func BenchmarkRevertInternal(b *testing.B) {
	blob := filepath.Join(b.TempDir(), "ram.bin")
	writeRandom(b, blob, 128<<20)
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
