package vmsnap_test

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/vmsnap/vmsnap"
	"github.com/vmsnap/vmsnap/internal/fakeqemu"
	"github.com/vmsnap/vmsnap/qmp"
	"github.com/vmsnap/vmsnap/store"
)

// writeLog is a FileStore that logs each record write: how it was made
// (put, stage, commit) and the record's status.
type writeLog struct {
	*store.FileStore
	mu     sync.Mutex
	writes []string
}

func (w *writeLog) log(how string, r *store.Record) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.writes = append(w.writes, fmt.Sprintf("%s %s %s", how, r.Name, r.Status))
}

func (w *writeLog) Put(ctx context.Context, domain string, r *store.Record) error {
	w.log("put", r)
	return w.FileStore.Put(ctx, domain, r)
}

func (w *writeLog) Stage(ctx context.Context, domain string, r *store.Record) error {
	w.log("stage", r)
	return w.FileStore.Stage(ctx, domain, r)
}

func (w *writeLog) Commit(ctx context.Context, domain string, r *store.Record, makeCurrent bool) error {
	w.log("commit", r)
	return w.FileStore.Commit(ctx, domain, r, makeCurrent)
}

// watchingMonitor calls before with each command, before sending it.
type watchingMonitor struct {
	qmp.Monitor
	before func(command string)
}

func (m *watchingMonitor) Execute(ctx context.Context, command string, args, result any) error {
	m.before(command)
	return m.Monitor.Execute(ctx, command, args, result)
}

// An internal create stages its intent (written, not flushed) and commits
// durably; with Options.SyncIntents the intent is a durable Put. Either
// way the intent is in the store before QEMU is asked to snapshot.
func TestInternalCreateStagesItsIntent(t *testing.T) {
	for _, tc := range []struct {
		flags vmsnap.CreateFlags
		sync  bool
		want  []string
	}{
		{0, false, []string{"stage s creating", "commit s ok"}},
		{vmsnap.DiskOnly, false, []string{"stage s creating", "commit s ok"}},
		{0, true, []string{"put s creating", "commit s ok"}},
	} {
		t.Run(fmt.Sprintf("%s/sync=%v", tc.flags, tc.sync), func(t *testing.T) {
			srv, err := fakeqemu.Start(fakeqemu.Options{Profile: fakeqemu.QEMU72, UUID: fakeUUID, Disks: []fakeqemu.Disk{
				{Node: "disk0", Device: "dev0", File: "/images/d0.qcow2"},
			}})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { srv.Close() })
			fs, err := store.NewFileStore(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			w := &writeLog{FileStore: fs}
			ctx := testCtx(t)
			mon, err := qmp.Dial(ctx, srv.Addr())
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { mon.Close() })
			var seen []string // the store's record when QEMU is first asked to snapshot
			watch := &watchingMonitor{Monitor: mon, before: func(cmd string) {
				if (cmd == "snapshot-save" || cmd == "transaction") && seen == nil {
					r, err := fs.Get(context.Background(), fakeUUID, "s")
					seen = append(seen, fmt.Sprint(r.Status, err))
				}
			}}
			dom, err := vmsnap.Open(ctx, watch, vmsnap.Options{Store: w, SyncIntents: tc.sync})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := dom.Create(ctx, vmsnap.CreateSpec{Name: "s"}, tc.flags).Wait(ctx); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, w.writes); diff != "" {
				t.Errorf("record writes (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff([]string{"creating<nil>"}, seen); diff != "" {
				t.Errorf("record when QEMU was asked to snapshot (-want +got):\n%s", diff)
			}
		})
	}
}
