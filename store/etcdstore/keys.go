package etcdstore

import (
	"bytes"
	"fmt"
	"strings"

	"github.com/vmsnap/vmsnap/store"
)

// DefaultPrefix is the key prefix used when Options.Prefix is empty.
const DefaultPrefix = "/vmsnap"

// Key layout under the prefix P, for the domain U:
//
//	P/U/snapshots/<name>   one record per snapshot, in xl syntax (store.Marshal)
//	P/U/current            current = "<name>", as current.xl of store.FileStore
//	P/U/lock/<lease>       the domain lock's holder and waiters, one per lease
//
// Names never contain '/' (store.ValidateName), so a name is the rest of
// its key as is and etcdctl shows it as it is.
const (
	snapshotsDir = "/snapshots/"
	currentLeaf  = "/current"
	lockDir      = "/lock/"
)

func (s *Store) domainPrefix(domain string) string  { return s.prefix + "/" + domain }
func (s *Store) recordsPrefix(domain string) string { return s.domainPrefix(domain) + snapshotsDir }
func (s *Store) recordKey(domain, name string) string {
	return s.recordsPrefix(domain) + name
}
func (s *Store) currentKey(domain string) string { return s.domainPrefix(domain) + currentLeaf }
func (s *Store) lockPrefix(domain string) string { return s.domainPrefix(domain) + lockDir }

// parsedKey is what a key under the prefix says.
type parsedKey struct {
	domain string
	kind   keyKind
	name   string // snapshot name for a record key
}

type keyKind int

const (
	keyOther keyKind = iota
	keyRecord
	keyCurrent
	keyLock
)

// parseKey splits a key of this store's layout. Keys it does not know
// give keyOther.
func (s *Store) parseKey(key string) parsedKey {
	rest, ok := strings.CutPrefix(key, s.prefix+"/")
	if !ok || len(rest) < 36 || store.ValidateDomain(rest[:36]) != nil {
		return parsedKey{}
	}
	p := parsedKey{domain: rest[:36]}
	rest = rest[36:]
	switch {
	case strings.HasPrefix(rest, snapshotsDir):
		p.kind, p.name = keyRecord, rest[len(snapshotsDir):]
	case rest == currentLeaf:
		p.kind = keyCurrent
	case strings.HasPrefix(rest, lockDir):
		p.kind = keyLock
	}
	return p
}

// marshalCurrent returns the current pointer's value: the same bytes as
// store.FileStore's current.xl. The quoting is store.Marshal's own: the
// pointer is the "name" line of a record carrying that name.
func marshalCurrent(name string) ([]byte, error) {
	data, err := store.Marshal(&store.Record{Name: name})
	if err != nil {
		return nil, err
	}
	for line := range bytes.Lines(data) {
		if v, ok := bytes.CutPrefix(line, []byte("name = ")); ok {
			b := []byte("# Current snapshot of this domain (xl config syntax).\ncurrent = ")
			return append(b, v...), nil
		}
	}
	return nil, fmt.Errorf("etcdstore: snapshot %q: no name line in the record's xl text", name)
}

// parseCurrent reads a current pointer written by marshalCurrent (or by
// hand, in xl syntax). The value is parsed by store.Unmarshal as a
// record's name, so quoting, escapes and name rules are exactly the
// store's. Settings other than "current" are ignored; "" means none.
func parseCurrent(data []byte) (string, error) {
	var value []byte
	for line := range bytes.Lines(data) {
		t := bytes.TrimLeft(line, " \t")
		rest, ok := bytes.CutPrefix(t, []byte("current"))
		if !ok {
			continue
		}
		rest = bytes.TrimLeft(rest, " \t")
		v, ok := bytes.CutPrefix(rest, []byte("="))
		if !ok {
			continue
		}
		if value != nil {
			return "", fmt.Errorf(`"current" is set twice`)
		}
		value = bytes.TrimSpace(v)
	}
	if value == nil || string(value) == `""` || string(value) == `''` {
		return "", nil
	}
	r, err := store.Unmarshal(append([]byte("name = "), append(value, '\n')...))
	if err != nil {
		return "", err
	}
	if r.Name == "" {
		return "", fmt.Errorf(`"current" is not a snapshot name`)
	}
	return r.Name, nil
}
