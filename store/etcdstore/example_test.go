package etcdstore_test

import (
	"context"
	"fmt"
	"log"

	"github.com/vmsnap/vmsnap/store"
	"github.com/vmsnap/vmsnap/store/etcdstore"
)

// A toolstack opens the fleet's store by URL and hands it to vmsnap.Open
// as Options.Store (with Options.MemoryDir set: memory files stay on the
// host's storage, not in etcd).
func ExampleOpenURL() {
	ctx := context.Background()
	s, err := etcdstore.OpenURL(ctx, "etcd://10.0.0.1:2379,10.0.0.2:2379,10.0.0.3:2379/vmsnap?lock-ttl=15s",
		etcdstore.TLSFiles{CACert: "/etc/etcd/ca.pem", Cert: "/etc/etcd/host.pem", Key: "/etc/etcd/host-key.pem"})
	if err != nil {
		log.Fatal(err)
	}
	defer s.Close()
	// ... vmsnap.Open(ctx, mon, vmsnap.Options{Store: s, MemoryDir: "/var/lib/xen/memory"})
}

// A fleet controller follows every domain's snapshots.
func ExampleWatcher() {
	ctx := context.Background()
	var s store.Store // from etcdstore.OpenURL
	w, ok := s.(etcdstore.Watcher)
	if !ok {
		return // this store cannot report changes
	}
	events, err := w.Watch(ctx, "", 0)
	if err != nil {
		log.Fatal(err)
	}
	for ev := range events {
		fmt.Println(ev.Kind, ev.Domain, ev.Name)
	}
}
