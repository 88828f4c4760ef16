package etcdstore

import (
	"context"
	"testing"
	"time"

	"github.com/vmsnap/vmsnap/store"
	"github.com/vmsnap/vmsnap/store/storetest"
)

func next(t *testing.T, ch <-chan Event) Event {
	t.Helper()
	select {
	case ev, ok := <-ch:
		if !ok {
			t.Fatal("watch channel closed")
		}
		return ev
	case <-time.After(5 * time.Second):
		t.Fatal("no event within 5s")
	}
	return Event{}
}

func TestWatch(t *testing.T) {
	srv := startEtcd(t)
	s := newStore(t, srv, Options{Prefix: "/watch"})
	var st store.Store = s
	w, ok := st.(Watcher)
	if !ok {
		t.Fatal("*Store is not a Watcher")
	}
	ctx := testContext(t)
	wctx, cancel := context.WithCancel(ctx)
	one, err := w.Watch(wctx, dom, 0)
	must(t, err)
	fleet, err := w.Watch(wctx, "", 0)
	must(t, err)

	unlock, err := s.Lock(ctx, dom) // lock keys are not reported
	must(t, err)
	must(t, s.Put(ctx, dom, &store.Record{Name: "a", Description: "first"}))
	must(t, s.SetCurrent(ctx, dom, "a"))
	must(t, s.Put(ctx, storetest.DomainB, &store.Record{Name: "b"}))
	must(t, s.Delete(ctx, dom, "a"))
	must(t, unlock())

	type seen struct {
		kind   EventKind
		domain string
		name   string
	}
	want := []seen{{EventPut, dom, "a"}, {EventCurrent, dom, "a"}, {EventDelete, dom, "a"}, {EventCurrent, dom, ""}}
	var last int64
	for i, w := range want {
		ev := next(t, one)
		if got := (seen{ev.Kind, ev.Domain, ev.Name}); got != w || ev.Err != nil {
			t.Errorf("domain event %d = %+v (%v), want %+v", i, got, ev.Err, w)
		}
		if ev.Kind == EventPut && (ev.Record == nil || ev.Record.Description != "first") {
			t.Errorf("put event record = %+v", ev.Record)
		}
		if ev.Revision < last {
			t.Errorf("revision %d after %d", ev.Revision, last)
		}
		last = ev.Revision
	}
	fleetWant := []seen{{EventPut, dom, "a"}, {EventCurrent, dom, "a"}, {EventPut, storetest.DomainB, "b"}, {EventDelete, dom, "a"}, {EventCurrent, dom, ""}}
	var firstRev int64
	for i, w := range fleetWant {
		ev := next(t, fleet)
		if got := (seen{ev.Kind, ev.Domain, ev.Name}); got != w {
			t.Errorf("fleet event %d = %+v, want %+v", i, got, w)
		}
		if i == 0 {
			firstRev = ev.Revision
		}
	}
	// Resuming from a revision replays from there.
	again, err := w.Watch(wctx, storetest.DomainB, firstRev)
	must(t, err)
	if ev := next(t, again); ev.Kind != EventPut || ev.Name != "b" {
		t.Errorf("resumed watch: %+v", ev)
	}
	cancel()
	for range one {
	}
	for range fleet {
	}
	for range again {
	}

	all, err := s.ListAll(ctx)
	must(t, err)
	if len(all) != 1 || len(all[storetest.DomainB]) != 1 || all[storetest.DomainB][0].Name != "b" {
		t.Errorf("ListAll = %v", all)
	}
}
