package vmsnap

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// Records are untrusted input: anyone who can write a record (a damaged
// store, a record copied from another domain, a planted file) could name
// any file. vmsnap removes, merges into, rebases or renames only files it
// can prove are this domain's own:
//
//   - images QEMU runs this domain on (its chains) when the operation
//     starts;
//   - memory files at the exact place vmsnap puts them: the domain's
//     memory directory, named after the snapshot, a regular file of this
//     process's user;
//   - overlays vmsnap created for the domain: when it creates one, it first
//     reserves the empty file (fixing its device and inode), then records
//     an ownership token on the snapshot's record — the path, device and
//     inode, authenticated with HMAC-SHA256 under a per-domain key — and
//     only then writes the image. The key is a 32-byte random file,
//     ".owner-key", 0600, in the domain's memory directory (the file
//     store's domain directory by default); a token is valid only for this
//     domain, this path and this very file. A domain with neither a file
//     store nor Options.MemoryDir has a key that lives as long as its
//     Domain value: its overlays can be proven only by the process that
//     made them, and are left alone by later ones;
//   - an empty regular file of this user at the exact path an intent named
//     before the crash that interrupted it (reserved, never written).
//
// A file that cannot be proven is left alone, and the operation that
// wanted to change it says so (ErrInconsistent, naming the files); a
// metadata-only delete still removes the record.

// labelOwns+N holds an ownership token (JSON).
const labelOwns = "vmsnap.owns."

// ownToken is the ownership token of one file.
type ownToken struct {
	Path string `json:"path"`
	Dev  uint64 `json:"dev"`
	Ino  uint64 `json:"ino"`
	MAC  string `json:"mac"`
}

// ownerKeyName is the key file's name in the domain's memory directory.
const ownerKeyName = ".owner-key"

// ownerKey returns the domain's key, creating it on first use.
func (d *Domain) ownerKey() ([]byte, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.key != nil {
		return d.key, nil
	}
	dir := d.domainDir()
	if dir == "" {
		d.key = make([]byte, 32)
		if _, err := rand.Read(d.key); err != nil {
			return nil, err
		}
		return d.key, nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	path := filepath.Join(dir, ownerKeyName)
	key, err := readOwnerKey(path)
	if errors.Is(err, os.ErrNotExist) {
		key = make([]byte, 32)
		if _, err = rand.Read(key); err != nil {
			return nil, err
		}
		if err = writeOwnerKey(path, key); errors.Is(err, os.ErrExist) {
			// Another process made it first.
			key, err = readOwnerKey(path)
		}
	}
	if err != nil {
		return nil, err
	}
	d.key = key
	return key, nil
}

// readOwnerKey reads a key file, refusing one that is not a regular 0600
// file of this user of 32 bytes.
func readOwnerKey(path string) ([]byte, error) {
	if err := checkOwnFile(path, true); err != nil {
		return nil, err
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	key := make([]byte, 33)
	n, err := io.ReadFull(f, key)
	if err != io.ErrUnexpectedEOF || n != 32 {
		return nil, fmt.Errorf("%w: ownership key %s is not 32 bytes", ErrInconsistent, path)
	}
	return key[:32], nil
}

func writeOwnerKey(path string, key []byte) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(key); err != nil {
		f.Close()
		os.Remove(path)
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// domainDir is the directory vmsnap keeps the domain's own files in
// (memory files, the ownership key): <MemoryDir>/<uuid>, else the file
// store's domain directory; "" when there is neither.
func (d *Domain) domainDir() string {
	if d.opts.MemoryDir != "" {
		return filepath.Join(d.opts.MemoryDir, d.uuid)
	}
	if root := d.fileStoreRoot(); root != "" {
		return filepath.Join(root, d.uuid)
	}
	return ""
}

// mac authenticates a file's identity for this domain.
func (d *Domain) mac(key []byte, path string, dev, ino uint64) string {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(d.uuid + "\x00" + path + "\x00" + strconv.FormatUint(dev, 10) + "\x00" + strconv.FormatUint(ino, 10)))
	return hex.EncodeToString(m.Sum(nil))
}

// claim returns the ownership token of path, a file this process just
// created for the domain.
func (d *Domain) claim(path string) (string, error) {
	key, err := d.ownerKey()
	if err != nil {
		return "", err
	}
	dev, ino, err := fileID(path)
	if err != nil {
		return "", err
	}
	b, err := json.Marshal(ownToken{Path: path, Dev: dev, Ino: ino, MAC: d.mac(key, path, dev, ino)})
	return string(b), err
}

// claimAll returns the tokens of paths.
func (d *Domain) claimAll(paths []string) ([]string, error) {
	var out []string
	for _, p := range paths {
		t, err := d.claim(p)
		if err != nil {
			return nil, fmt.Errorf("claim %s: %w", p, err)
		}
		out = append(out, t)
	}
	return out, nil
}

// provenBy reports whether one of tokens proves that path is a file vmsnap
// created for this domain: the token is authentic and path is still that
// very file.
func (d *Domain) provenBy(tokens []string, path string) bool {
	key, err := d.ownerKey()
	if err != nil {
		return false
	}
	for _, raw := range tokens {
		var t ownToken
		if json.Unmarshal([]byte(raw), &t) != nil || t.Path != path {
			continue
		}
		if !hmac.Equal([]byte(t.MAC), []byte(d.mac(key, t.Path, t.Dev, t.Ino))) {
			continue
		}
		if dev, ino, err := fileID(path); err == nil && dev == t.Dev && ino == t.Ino {
			return true
		}
	}
	return false
}

// reservedEmpty reports whether path is an empty regular file of this
// user: a reservation an interrupted operation made and never wrote.
func reservedEmpty(path string) bool {
	fi, err := os.Lstat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Size() == 0 && checkOwnFile(path, false) == nil
}

// ownedMemoryFile reports whether path is the memory file vmsnap puts for
// snapshot name: exactly that path in the domain's memory directory, a
// regular file of this user.
func (d *Domain) ownedMemoryFile(name, path string) bool {
	dir := d.domainDir()
	if dir == "" || path != filepath.Join(dir, fileNameFor(name)+".save") {
		return false
	}
	return checkOwnFile(path, false) == nil
}

// ownTokens returns the ownership tokens among a record's labels.
func ownTokens(labels map[string]string) []string {
	var keys []string
	for k := range labels {
		if strings.HasPrefix(k, labelOwns) {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	out := make([]string, 0, len(keys))
	for _, k := range keys {
		out = append(out, labels[k])
	}
	return out
}

// putOwnTokens adds tokens to labels that do not hold them yet.
func putOwnTokens(labels map[string]string, tokens []string) {
	have := ownTokens(labels)
	i := 0
	for _, t := range tokens {
		if slices.Contains(have, t) {
			continue
		}
		for {
			if _, used := labels[labelOwns+strconv.Itoa(i)]; !used {
				break
			}
			i++
		}
		labels[labelOwns+strconv.Itoa(i)] = t
		have = append(have, t)
	}
}

// errUnproven reports files an operation leaves alone because it cannot
// prove they are this domain's own.
func errUnproven(what string, files []string) error {
	return fmt.Errorf("%w: %w: %s names files vmsnap cannot prove it created for this domain, so they are left alone: %v (delete with DeleteMetadataOnly to drop only the record)", ErrInconsistent, errUnprovenFiles, what, files)
}

// errUnprovenFiles marks a record that names files vmsnap will not touch.
// Reconcile leaves such a record as it is (List shows it) without failing
// the operations on the rest of the domain.
var errUnprovenFiles = errors.New("unproven files")
