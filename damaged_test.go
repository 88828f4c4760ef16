package vmsnap_test

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/vmsnap/vmsnap"
	"github.com/vmsnap/vmsnap/internal/fakeqemu"
	"github.com/vmsnap/vmsnap/store"
)

// A record that cannot be read affects only itself: the healthy snapshots
// beside it are created, reverted and deleted, and a metadata-only delete
// removes the bad record (and nothing else) while a plain delete of it
// refuses.
func TestDamagedRecordAffectsOnlyItself(t *testing.T) {
	for _, damage := range []struct {
		name string
		data []byte
	}{
		{"garbage", []byte("\x00\x01not xl at all ]]]")},
		{"truncated", []byte("name = \"bad\"\ncreation_time = \"20")},
		{"empty", nil},
	} {
		t.Run(damage.name, func(t *testing.T) {
			f := startFake(t, fakeqemu.QEMU72)
			ctx := testCtx(t)
			for _, n := range []string{"a", "b"} {
				if _, err := f.dom.Create(ctx, vmsnap.CreateSpec{Name: n}, 0).Wait(ctx); err != nil {
					t.Fatal(err)
				}
			}
			bad := filepath.Join(f.fs.Root(), f.dom.UUID(), store.RecordFileName("bad"))
			if err := os.WriteFile(bad, damage.data, 0o600); err != nil {
				t.Fatal(err)
			}
			l, err := f.dom.List(ctx, 0).Wait(ctx)
			if err != nil {
				t.Fatalf("list beside a damaged record: %v", err)
			}
			if len(l.Snapshots) != 2 {
				t.Errorf("list shows %d healthy snapshots, want 2", len(l.Snapshots))
			}
			if _, err := f.dom.Create(ctx, vmsnap.CreateSpec{Name: "c"}, 0).Wait(ctx); err != nil {
				t.Fatalf("create beside a damaged record: %v", err)
			}
			if _, err := f.dom.Revert(ctx, "a", 0).Wait(ctx); err != nil {
				t.Fatalf("revert beside a damaged record: %v", err)
			}
			if _, err := f.dom.Delete(ctx, "b", 0).Wait(ctx); err != nil {
				t.Fatalf("delete beside a damaged record: %v", err)
			}
			if _, err := f.dom.Delete(ctx, "bad", 0).Wait(ctx); !errors.Is(err, vmsnap.ErrInconsistent) {
				t.Errorf("plain delete of the damaged record: %v, want ErrInconsistent", err)
			}
			if _, err := os.Stat(bad); err != nil {
				t.Fatalf("the refused delete removed the record: %v", err)
			}
			done, err := f.dom.Delete(ctx, "bad", vmsnap.DeleteMetadataOnly).Wait(ctx)
			if err != nil || len(done) != 1 || done[0] != "bad" {
				t.Fatalf("metadata-only delete of the damaged record: %v, %v", done, err)
			}
			if _, err := os.Stat(bad); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("the damaged record is still there: %v", err)
			}
			recs, err := f.fs.List(ctx, f.dom.UUID())
			if err != nil || len(recs) != 2 {
				t.Errorf("records after: %d, %v; want a and c", len(recs), err)
			}
		})
	}
}
