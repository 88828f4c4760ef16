package etcdstore

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/vmsnap/vmsnap/store"
)

// Defaults of Options.
const (
	// DefaultLockTTL is how long the domain lock of a holder that stopped
	// renewing it (crashed, paused, cut off from etcd) outlives it.
	DefaultLockTTL = 15 * time.Second
	// DefaultRequestTimeout bounds each request to etcd.
	DefaultRequestTimeout = 5 * time.Second
)

// Options configure a Store. The zero value is usable.
type Options struct {
	// Prefix is prepended to every key; DefaultPrefix when empty. A
	// trailing '/' is dropped. Several fleets can share one etcd with
	// different prefixes.
	Prefix string
	// LockTTL is the time to live of the lease behind each domain lock, in
	// whole seconds (rounded up; DefaultLockTTL when zero). A holder that
	// dies releases the lock when its lease expires, at most LockTTL after
	// its last renewal; a holder cut off from etcd for longer loses it.
	LockTTL time.Duration
	// RequestTimeout bounds each request to etcd (DefaultRequestTimeout
	// when zero), so that an unreachable etcd gives an error wrapping
	// ErrUnavailable rather than a wait without end. Waiting for a lock
	// that another holder has is bounded by the caller's context only.
	RequestTimeout time.Duration
	// Holder is stored as the value of this store's lock keys, so that
	// `etcdctl get --prefix <prefix>/<uuid>/lock/` tells who holds or waits
	// for a domain. Empty means "<hostname> pid <pid>".
	Holder string
}

// Store is a store.Store kept in etcd v3, shared by every host of a fleet.
// Records are the xl text store.FileStore writes (store.Marshal), one key
// per snapshot:
//
//	<prefix>/<domain-uuid>/snapshots/<name>   the record
//	<prefix>/<domain-uuid>/current            current = "<name>"
//	<prefix>/<domain-uuid>/lock/<lease-id>    the domain lock (holder, then waiters)
//
// Names and UUIDs are checked by store.ValidateName and
// store.ValidateDomain, records by store.Record.Validate, before anything
// is sent.
//
// Lock is a mutex over etcd keys attached to a lease of Options.LockTTL,
// kept alive while held: the oldest key of the domain's lock prefix holds
// the lock. A holder that dies or is cut off loses it when the lease
// expires. Every write this Store makes while it holds the domain's lock
// is a transaction conditioned on its lock key still existing with the
// revision it was created at (a fence): once the lease has expired, a
// write from the old holder is refused with ErrLockLost and cannot land on
// the new holder's work. Writes made while this Store does not hold the
// domain's lock are not fenced; the store.Store contract lets anyone Put.
//
// Within one process, Lock also queues the goroutines of one Store per
// domain, so the fence is per Store: share one Store among the goroutines
// of a process.
//
// Store is safe for concurrent use. Close releases the locks it holds.
type Store struct {
	cli       *clientv3.Client
	ownClient bool
	prefix    string
	ttl       int64
	timeout   time.Duration
	holder    string

	// ctx keeps the leases of held locks alive; Close cancels it.
	ctx    context.Context
	cancel context.CancelFunc

	mu      sync.Mutex
	domains map[string]*domainLock
	closed  bool

	closeOnce sync.Once
	closeErr  error
}

// domainLock queues the goroutines of this Store for one domain's lock
// and remembers the fence of the one that holds it.
type domainLock struct {
	ch   chan struct{}
	refs int
	held *fence
}

var _ store.Store = (*Store)(nil)

// New returns a Store over cli, which the caller keeps and closes after
// the Store.
func New(cli *clientv3.Client, opts Options) (*Store, error) {
	if cli == nil {
		return nil, errors.New("etcdstore: nil client")
	}
	ttl := opts.LockTTL
	switch {
	case ttl == 0:
		ttl = DefaultLockTTL
	case ttl < 0:
		return nil, fmt.Errorf("etcdstore: negative lock TTL %v", ttl)
	}
	timeout := opts.RequestTimeout
	switch {
	case timeout == 0:
		timeout = DefaultRequestTimeout
	case timeout < 0:
		return nil, fmt.Errorf("etcdstore: negative request timeout %v", timeout)
	}
	prefix := opts.Prefix
	if prefix == "" {
		prefix = DefaultPrefix
	}
	prefix = strings.TrimRight(prefix, "/")
	holder := opts.Holder
	if holder == "" {
		host, _ := os.Hostname()
		holder = fmt.Sprintf("%s pid %d", host, os.Getpid())
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Store{
		cli:     cli,
		prefix:  prefix,
		ttl:     int64((ttl + time.Second - 1) / time.Second),
		timeout: timeout,
		holder:  holder,
		ctx:     ctx,
		cancel:  cancel,
		domains: make(map[string]*domainLock),
	}, nil
}

// Open connects to etcd with cfg and returns a Store that closes the
// client on Close. It checks that etcd answers (a read of the prefix,
// bounded by ctx and the request timeout), so a wrong endpoint fails here
// with an error wrapping ErrUnavailable. cfg.DialTimeout defaults to the
// request timeout.
func Open(ctx context.Context, cfg clientv3.Config, opts Options) (*Store, error) {
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = opts.RequestTimeout
		if cfg.DialTimeout == 0 {
			cfg.DialTimeout = DefaultRequestTimeout
		}
	}
	if cfg.Context == nil {
		cfg.Context = context.WithoutCancel(ctx)
	}
	cli, err := clientv3.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("etcdstore: connecting to %v: %w: %w", cfg.Endpoints, ErrUnavailable, err)
	}
	s, err := New(cli, opts)
	if err != nil {
		cli.Close()
		return nil, err
	}
	s.ownClient = true
	rctx, cancel := s.rpcContext(ctx)
	_, err = cli.Get(rctx, s.prefix+"/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	cancel()
	if err != nil {
		s.Close()
		return nil, s.wrapRPC(ctx, "connecting", err)
	}
	return s, nil
}

// Client returns the etcd client the Store uses.
func (s *Store) Client() *clientv3.Client { return s.cli }

// Prefix returns the key prefix, without a trailing '/'.
func (s *Store) Prefix() string { return s.prefix }

// Close releases the locks this Store holds (revoking their leases),
// stops renewing them and, for a Store made by Open, closes the client.
// Operations after Close fail. Calling it again returns the same result.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		s.mu.Lock()
		s.closed = true
		var held []*fence
		for _, dl := range s.domains {
			if dl.held != nil {
				held = append(held, dl.held)
			}
		}
		s.mu.Unlock()
		var errs []error
		for _, f := range held {
			if err := s.revoke(f); err != nil {
				errs = append(errs, err)
			}
		}
		s.cancel()
		if s.ownClient {
			if err := s.cli.Close(); err != nil && !errors.Is(err, context.Canceled) {
				errs = append(errs, fmt.Errorf("etcdstore: closing the client: %w", err))
			}
		}
		s.closeErr = errors.Join(errs...)
	})
	return s.closeErr
}

var errClosed = errors.New("etcdstore: store is closed")

func (s *Store) checkOpen() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return errClosed
	}
	return nil
}

// rpcContext bounds one request by the request timeout.
func (s *Store) rpcContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, s.timeout)
}

// begin validates domain and checks ctx and the store before a request.
func (s *Store) begin(ctx context.Context, domain string) error {
	if err := store.ValidateDomain(domain); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	return s.checkOpen()
}

// Put implements store.Store: one transaction, fenced when this Store
// holds the domain's lock.
func (s *Store) Put(ctx context.Context, domain string, r *store.Record) error {
	if err := store.ValidateDomain(domain); err != nil {
		return err
	}
	data, err := store.Marshal(r)
	if err != nil {
		return fmt.Errorf("etcdstore: domain %s: %w", domain, err)
	}
	if err := s.begin(ctx, domain); err != nil {
		return err
	}
	what := fmt.Sprintf("domain %s: snapshot %q: put", domain, r.Name)
	_, err = s.commit(ctx, domain, what, nil, []clientv3.Op{clientv3.OpPut(s.recordKey(domain, r.Name), string(data))}, nil)
	return err
}

// Get implements store.Store with one read.
func (s *Store) Get(ctx context.Context, domain, name string) (*store.Record, error) {
	if err := store.ValidateDomain(domain); err != nil {
		return nil, err
	}
	if err := store.ValidateName(name); err != nil {
		return nil, err
	}
	if err := s.begin(ctx, domain); err != nil {
		return nil, err
	}
	key := s.recordKey(domain, name)
	rctx, cancel := s.rpcContext(ctx)
	resp, err := s.cli.Get(rctx, key)
	cancel()
	if err != nil {
		return nil, s.wrapRPC(ctx, fmt.Sprintf("domain %s: snapshot %q: get", domain, name), err)
	}
	if len(resp.Kvs) == 0 {
		return nil, fmt.Errorf("etcdstore: domain %s: snapshot %q: %w", domain, name, store.ErrNotFound)
	}
	return decodeRecord(key, name, resp.Kvs[0].Value)
}

// decodeRecord parses the value of the record key of name. Errors are
// *store.CorruptError naming the key.
func decodeRecord(key, name string, value []byte) (*store.Record, error) {
	if len(value) > store.MaxRecordSize {
		return nil, &store.CorruptError{Path: key, Err: fmt.Errorf("%d bytes, more than %d", len(value), store.MaxRecordSize)}
	}
	r, err := store.Unmarshal(value)
	if err != nil {
		var ce *store.CorruptError
		if errors.As(err, &ce) {
			c := *ce
			c.Path = key
			return nil, &c
		}
		return nil, &store.CorruptError{Path: key, Err: err}
	}
	if r.Name != name {
		return nil, &store.CorruptError{Path: key, Err: fmt.Errorf("the record is named %q", r.Name)}
	}
	return r, nil
}

// Delete implements store.Store. The record and, when it was the current
// snapshot, the current pointer go in one transaction.
func (s *Store) Delete(ctx context.Context, domain, name string) error {
	if err := store.ValidateDomain(domain); err != nil {
		return err
	}
	if err := store.ValidateName(name); err != nil {
		return err
	}
	if err := s.begin(ctx, domain); err != nil {
		return err
	}
	what := fmt.Sprintf("domain %s: snapshot %q: delete", domain, name)
	key, curKey := s.recordKey(domain, name), s.currentKey(domain)
	for {
		rctx, cancel := s.rpcContext(ctx)
		cur, err := s.cli.Get(rctx, curKey)
		cancel()
		if err != nil {
			return s.wrapRPC(ctx, what, err)
		}
		var curRev int64
		ops := []clientv3.Op{clientv3.OpDelete(key)}
		if len(cur.Kvs) > 0 {
			curRev = cur.Kvs[0].ModRevision
			// A pointer that cannot be read is left alone (Current reports it).
			if n, err := parseCurrent(cur.Kvs[0].Value); err == nil && n == name {
				ops = append(ops, clientv3.OpDelete(curKey))
			}
		}
		conds := []clientv3.Cmp{
			clientv3.Compare(clientv3.CreateRevision(key), ">", 0),
			clientv3.Compare(clientv3.ModRevision(curKey), "=", curRev),
		}
		resp, err := s.commit(ctx, domain, what, conds, ops, []clientv3.Op{clientv3.OpGet(key, clientv3.WithCountOnly())})
		if err != nil {
			return err
		}
		if resp.Succeeded {
			return nil
		}
		if resp.Responses[0].GetResponseRange().Count == 0 {
			return fmt.Errorf("etcdstore: domain %s: snapshot %q: %w", domain, name, store.ErrNotFound)
		}
		// The current pointer moved in between: read it again.
	}
}

// List implements store.Store with one range read of the domain's
// records. Values that cannot be trusted (corrupt xl, a record whose name
// is not its key's) are left out and reported in the error, an
// errors.Join of one *store.CorruptError per key; the good records are
// returned with it.
func (s *Store) List(ctx context.Context, domain string) ([]*store.Record, error) {
	if err := s.begin(ctx, domain); err != nil {
		return nil, err
	}
	pfx := s.recordsPrefix(domain)
	rctx, cancel := s.rpcContext(ctx)
	resp, err := s.cli.Get(rctx, pfx, clientv3.WithPrefix())
	cancel()
	if err != nil {
		return nil, s.wrapRPC(ctx, fmt.Sprintf("domain %s: list", domain), err)
	}
	keys := make([]string, len(resp.Kvs))
	values := make([][]byte, len(resp.Kvs))
	for i, kv := range resp.Kvs {
		keys[i], values[i] = string(kv.Key), kv.Value
	}
	out, err := decodeAll(ctx, pfx, keys, values)
	if err != nil {
		return out, fmt.Errorf("etcdstore: domain %s: some snapshot records cannot be read: %w", domain, err)
	}
	return out, nil
}

// decodeAll decodes record values (in parallel when there are many) and
// sorts the good ones as store.Store.List does.
func decodeAll(ctx context.Context, pfx string, keys []string, values [][]byte) ([]*store.Record, error) {
	records := make([]*store.Record, len(keys))
	errs := make([]error, len(keys))
	decode := func(i int) {
		name := strings.TrimPrefix(keys[i], pfx)
		if err := store.ValidateName(name); err != nil {
			errs[i] = &store.CorruptError{Path: keys[i], Err: err}
			return
		}
		records[i], errs[i] = decodeRecord(keys[i], name, values[i])
	}
	workers := runtime.GOMAXPROCS(0)
	if len(keys) < 64 {
		workers = 1
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= len(keys) || i%256 == 0 && ctx.Err() != nil {
					return
				}
				decode(i)
			}
		}()
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	out := make([]*store.Record, 0, len(records))
	for _, r := range records {
		if r != nil {
			out = append(out, r)
		}
	}
	sortRecords(out)
	return out, errors.Join(errs...)
}

// Current implements store.Store.
func (s *Store) Current(ctx context.Context, domain string) (string, error) {
	if err := s.begin(ctx, domain); err != nil {
		return "", err
	}
	key := s.currentKey(domain)
	rctx, cancel := s.rpcContext(ctx)
	resp, err := s.cli.Get(rctx, key)
	cancel()
	if err != nil {
		return "", s.wrapRPC(ctx, fmt.Sprintf("domain %s: current", domain), err)
	}
	if len(resp.Kvs) == 0 {
		return "", nil
	}
	name, err := parseCurrent(resp.Kvs[0].Value)
	if err != nil {
		return "", fmt.Errorf("etcdstore: domain %s: %w", domain, &store.CorruptError{Path: key, Err: err})
	}
	return name, nil
}

// SetCurrent implements store.Store: one transaction, conditioned on the
// record existing (and fenced when this Store holds the domain's lock).
func (s *Store) SetCurrent(ctx context.Context, domain, name string) error {
	if err := store.ValidateDomain(domain); err != nil {
		return err
	}
	if name != "" {
		if err := store.ValidateName(name); err != nil {
			return err
		}
	}
	if err := s.begin(ctx, domain); err != nil {
		return err
	}
	curKey := s.currentKey(domain)
	if name == "" {
		_, err := s.commit(ctx, domain, fmt.Sprintf("domain %s: clearing current snapshot", domain), nil,
			[]clientv3.Op{clientv3.OpDelete(curKey)}, nil)
		return err
	}
	value, err := marshalCurrent(name)
	if err != nil {
		return err
	}
	what := fmt.Sprintf("domain %s: making snapshot %q current", domain, name)
	key := s.recordKey(domain, name)
	resp, err := s.commit(ctx, domain, what,
		[]clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(key), ">", 0)},
		[]clientv3.Op{clientv3.OpPut(curKey, string(value))}, nil)
	if err != nil {
		return err
	}
	if !resp.Succeeded {
		return fmt.Errorf("etcdstore: %s: %w", what, store.ErrNotFound)
	}
	return nil
}

// commit runs one transaction: if conds (and, when this Store holds the
// domain's lock, the lock's fence) hold, ops; else orElse. A failed fence
// gives an error wrapping ErrLockLost; a failed condition gives a response
// with Succeeded false whose first responses are orElse's.
func (s *Store) commit(ctx context.Context, domain, what string, conds []clientv3.Cmp, ops, orElse []clientv3.Op) (*clientv3.TxnResponse, error) {
	f := s.heldFence(domain)
	if f != nil {
		conds = append(conds[:len(conds):len(conds)], f.cmp())
		orElse = append(orElse[:len(orElse):len(orElse)], clientv3.OpGet(f.key))
	}
	rctx, cancel := s.rpcContext(ctx)
	resp, err := s.cli.Txn(rctx).If(conds...).Then(ops...).Else(orElse...).Commit()
	cancel()
	if err != nil {
		return nil, s.wrapRPC(ctx, what, err)
	}
	if !resp.Succeeded && f != nil {
		kvs := resp.Responses[len(resp.Responses)-1].GetResponseRange().Kvs
		if len(kvs) == 0 || kvs[0].CreateRevision != f.rev {
			return nil, fmt.Errorf("etcdstore: %s: refused, %w: lock key %s (lease %x) is gone, its lease expired or was revoked", what, ErrLockLost, f.key, int64(f.lease))
		}
	}
	return resp, nil
}
