package etcdstore

import (
	"context"
	"errors"
	"fmt"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/vmsnap/vmsnap/store"
)

// Watcher is the optional capability of a store.Store that reports
// changes to snapshot records as they happen. Detect it with a type
// assertion:
//
//	if w, ok := s.(etcdstore.Watcher); ok { events, err := w.Watch(ctx, domain, 0) ... }
type Watcher interface {
	// Watch reports the changes to domain's records and current pointer,
	// or to every domain's when domain is "", from revision fromRevision
	// on (0: from now). The channel is closed when ctx ends; a failure
	// that ends the watch first (such as the revision having been
	// compacted) is sent as a last Event of kind EventError.
	//
	// To follow a domain without missing a change, start the watch first,
	// then List, and apply events whose Revision is newer than the
	// record's; or pass the Revision of a previous event to resume.
	Watch(ctx context.Context, domain string, fromRevision int64) (<-chan Event, error)
}

var _ Watcher = (*Store)(nil)

// EventKind says what an Event reports.
type EventKind int

// Event kinds.
const (
	// EventPut: a record was created or replaced; Event.Record holds it
	// (nil and Event.Err set when it cannot be read).
	EventPut EventKind = iota + 1
	// EventDelete: a record was deleted.
	EventDelete
	// EventCurrent: the current snapshot changed; Event.Name is the new
	// one, "" when cleared.
	EventCurrent
	// EventError: the watch failed and ends; Event.Err says why.
	EventError
)

// String returns the kind's name.
func (k EventKind) String() string {
	switch k {
	case EventPut:
		return "put"
	case EventDelete:
		return "delete"
	case EventCurrent:
		return "current"
	case EventError:
		return "error"
	}
	return fmt.Sprintf("EventKind(%d)", int(k))
}

// Event is one change seen by Watch.
type Event struct {
	// Kind says what changed.
	Kind EventKind
	// Domain is the domain's UUID ("" for EventError).
	Domain string
	// Name is the snapshot's name (EventPut, EventDelete) or the new
	// current snapshot (EventCurrent).
	Name string
	// Record is the new record of an EventPut.
	Record *store.Record
	// Err is why the record or pointer of the event cannot be read, or why
	// the watch ended (EventError).
	Err error
	// Revision is etcd's revision of the change; pass it to Watch to
	// resume after it.
	Revision int64
}

// Watch implements Watcher with one etcd watch on the domain's keys, or
// on the whole prefix. Lock keys are not reported.
func (s *Store) Watch(ctx context.Context, domain string, fromRevision int64) (<-chan Event, error) {
	key := s.prefix + "/"
	if domain != "" {
		if err := store.ValidateDomain(domain); err != nil {
			return nil, err
		}
		key = s.domainPrefix(domain) + "/"
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := s.checkOpen(); err != nil {
		return nil, err
	}
	opts := []clientv3.OpOption{clientv3.WithPrefix()}
	if fromRevision > 0 {
		opts = append(opts, clientv3.WithRev(fromRevision))
	}
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	wch := s.cli.Watch(wctx, key, opts...)
	out := make(chan Event, 64)
	go func() {
		defer cancel()
		defer close(out)
		send := func(ev Event) bool {
			select {
			case out <- ev:
				return true
			case <-ctx.Done():
				return false
			}
		}
		for wr := range wch {
			if err := wr.Err(); err != nil {
				send(Event{Kind: EventError, Err: fmt.Errorf("etcdstore: watching %s: %w", key, err), Revision: wr.Header.Revision})
				return
			}
			for _, ev := range wr.Events {
				e, ok := s.event(ev)
				if ok && !send(e) {
					return
				}
			}
		}
		if ctx.Err() == nil {
			send(Event{Kind: EventError, Err: fmt.Errorf("etcdstore: watching %s: the watch ended", key)})
		}
	}()
	return out, nil
}

// event turns an etcd event into an Event; lock keys and unknown keys
// give false.
func (s *Store) event(ev *clientv3.Event) (Event, bool) {
	key := string(ev.Kv.Key)
	p := s.parseKey(key)
	e := Event{Domain: p.domain, Revision: ev.Kv.ModRevision}
	switch p.kind {
	case keyRecord:
		e.Name = p.name
		if ev.Type == mvccpb.DELETE {
			e.Kind = EventDelete
			return e, true
		}
		e.Kind = EventPut
		e.Record, e.Err = decodeRecord(key, p.name, ev.Kv.Value)
		return e, true
	case keyCurrent:
		e.Kind = EventCurrent
		if ev.Type == mvccpb.PUT {
			name, err := parseCurrent(ev.Kv.Value)
			if err != nil {
				e.Err = &store.CorruptError{Path: key, Err: err}
			}
			e.Name = name
		}
		return e, true
	}
	return Event{}, false
}

// ListAll returns the records of every domain under the prefix, by domain
// UUID, with one range read: what a fleet controller needs without
// visiting every host. Records that cannot be read are left out and
// reported in the error, as List does.
func (s *Store) ListAll(ctx context.Context) (map[string][]*store.Record, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := s.checkOpen(); err != nil {
		return nil, err
	}
	rctx, cancel := s.rpcContext(ctx)
	resp, err := s.cli.Get(rctx, s.prefix+"/", clientv3.WithPrefix())
	cancel()
	if err != nil {
		return nil, s.wrapRPC(ctx, "list all domains", err)
	}
	type batch struct {
		keys   []string
		values [][]byte
	}
	byDomain := map[string]*batch{}
	for _, kv := range resp.Kvs {
		p := s.parseKey(string(kv.Key))
		if p.kind != keyRecord {
			continue
		}
		b := byDomain[p.domain]
		if b == nil {
			b = &batch{}
			byDomain[p.domain] = b
		}
		b.keys = append(b.keys, string(kv.Key))
		b.values = append(b.values, kv.Value)
	}
	out := make(map[string][]*store.Record, len(byDomain))
	var errs []error
	for d, b := range byDomain {
		rs, err := decodeAll(ctx, s.recordsPrefix(d), b.keys, b.values)
		if err != nil {
			if ctx.Err() != nil {
				return nil, err
			}
			errs = append(errs, fmt.Errorf("etcdstore: domain %s: some snapshot records cannot be read: %w", d, err))
		}
		out[d] = rs
	}
	if len(errs) > 0 {
		return out, errors.Join(errs...)
	}
	return out, nil
}
