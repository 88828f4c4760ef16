package etcdstore

import (
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vmsnap/vmsnap/store"
	"github.com/vmsnap/vmsnap/store/storetest"
)

// TestConformance runs the shared store suite against a real etcd; every
// subtest gets its own prefix, so an empty store.
func TestConformance(t *testing.T) {
	srv := startEtcd(t)
	cli := newClient(t, srv)
	var n atomic.Int64
	storetest.Run(t, func(t *testing.T) store.Store {
		s, err := New(cli, Options{Prefix: fmt.Sprintf("/conformance/%d", n.Add(1)), LockTTL: 5 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	})
}
