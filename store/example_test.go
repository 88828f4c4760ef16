package store_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"github.com/vmsnap/vmsnap/store"
)

// An engine records its intent, does the work, then commits, all under the
// domain's lock.
func Example() {
	ctx := context.Background()
	var s store.Store = store.NewMemStore() // or store.NewFileStore(store.DefaultRoot)
	const domain = "5c84adcc-bd59-788a-96d2-195f9b599cfe"

	unlock, err := s.Lock(ctx, domain)
	if err != nil {
		log.Fatal(err)
	}
	defer unlock()

	parent, _ := s.Current(ctx, domain)
	r := &store.Record{
		Name:         "1397207577",
		CreationTime: time.Unix(1397207577, 0),
		State:        "running",
		Parent:       parent,
		Status:       store.StatusCreating,
		Memory:       store.Memory{Kind: "internal", Node: "drive0"},
		Disks:        []store.Disk{{Device: "virtio0", Kind: "internal", Tag: "1397207577"}},
	}
	if err := store.Create(ctx, s, domain, r); err != nil {
		log.Fatal(err)
	}
	// ... take the snapshot in QEMU ...
	r.Status = store.StatusOK
	if err := s.Put(ctx, domain, r); err != nil {
		log.Fatal(err)
	}
	if err := s.SetCurrent(ctx, domain, r.Name); err != nil {
		log.Fatal(err)
	}

	got, _ := s.Get(ctx, domain, "1397207577")
	cur, _ := s.Current(ctx, domain)
	fmt.Println(got.Name, got.Status, got.CreationTime.UTC().Format(time.RFC3339), cur)
	// Output: 1397207577 ok 2014-04-11T09:12:57Z 1397207577
}

// A record in the file format: xl config syntax that people and xl tools
// can read.
func ExampleMarshal() {
	data, err := store.Marshal(&store.Record{
		Name:         "before upgrade",
		Description:  "say \"hi\"\nsecond line",
		CreationTime: time.Date(2026, 11, 26, 7, 0, 0, 123456789, time.UTC),
		State:        "paused",
		Status:       store.StatusOK,
		Memory:       store.Memory{Kind: "external", File: "/var/lib/xen/snapshots/5c84adcc-bd59-788a-96d2-195f9b599cfe/before upgrade.save"},
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Print(string(data))
	// Output:
	// # Snapshot metadata (xl config syntax). Edit with care: the store checks every value.
	// format_version = 1
	// name = "before upgrade"
	// description = "say \"hi\"\nsecond line"
	// creation_time = "2026-11-26T07:00:00.123456789Z"
	// creation_time_epoch = 1795676400
	// state = "paused"
	// status = "ok"
	// memory = "external"
	// memory_file = "/var/lib/xen/snapshots/5c84adcc-bd59-788a-96d2-195f9b599cfe/before upgrade.save"
}
