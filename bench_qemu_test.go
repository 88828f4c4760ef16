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
	"strings"
	"testing"
	"time"

	"github.com/vmsnap/vmsnap"
	"github.com/vmsnap/vmsnap/internal/qemutest"
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
// the same guest, interleaved so both see the same machine, each snapshot
// deleted (outside the timing) before the next is taken, so both save into
// images in the same state. Two guests: the idle 64 MiB counter guest
// (whose save takes milliseconds, so vmsnap's fixed cost shows) and one
// with 128 MiB of random data in RAM (a save that writes real memory).
func BenchmarkFullInternalSnapshot(b *testing.B) {
	b.Run("idle-64MiB", func(b *testing.B) { benchFullInternal(b, qemutest.Options{}) })
	b.Run("loaded-128MiB", func(b *testing.B) {
		blob := filepath.Join(b.TempDir(), "ram.bin")
		writeRandom(b, blob, 128<<20)
		benchFullInternal(b, qemutest.Options{MemoryMiB: 256, DiskSize: "512M", Loaders: []qemutest.Loader{{File: blob, Addr: 0x1000000}}})
	})
}

// writeRandom writes size bytes of incompressible data to path.
func writeRandom(tb testing.TB, path string, size int) {
	tb.Helper()
	buf := make([]byte, size)
	if _, err := rand.Read(buf); err != nil {
		tb.Fatal(err)
	}
	if err := os.WriteFile(path, buf, 0o600); err != nil {
		tb.Fatal(err)
	}
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
	dom, err := vmsnap.Open(ctx, vm.Mon, vmsnap.Options{Store: fs})
	if err != nil {
		b.Fatal(err)
	}
	raw := dialRaw(b, rawSock)
	devices := []string{vm.Disks[0].Node, vm.Disks[1].Node}
	var rawTime, libTime time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		tag := fmt.Sprintf("raw%d", i)
		t0 := time.Now()
		raw.job(b, "snapshot-save", "save-"+tag, map[string]any{"tag": tag, "vmstate": devices[0], "devices": devices})
		rawTime += time.Since(t0)
		b.StopTimer()
		raw.job(b, "snapshot-delete", "del-"+tag, map[string]any{"tag": tag, "devices": devices})
		b.StartTimer()

		name := fmt.Sprintf("lib%d", i)
		t0 = time.Now()
		if _, err := dom.Create(ctx, vmsnap.CreateSpec{Name: name}, 0).Wait(ctx); err != nil {
			b.Fatal(err)
		}
		libTime += time.Since(t0)

		b.StopTimer()
		if _, err := dom.Delete(ctx, name, 0).Wait(ctx); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	b.ReportMetric(float64(rawTime.Microseconds())/1000/float64(b.N), "raw-ms/op")
	b.ReportMetric(float64(libTime.Microseconds())/1000/float64(b.N), "vmsnap-ms/op")
	b.ReportMetric(float64(libTime-rawTime)/float64(time.Millisecond)/float64(b.N), "overhead-ms/op")
	b.ReportMetric(float64(libTime)/float64(rawTime), "vmsnap/raw")
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
