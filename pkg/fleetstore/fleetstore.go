// Package fleetstore is the vmcore.Store of fleet mode: what must survive
// between passes, kept in the cluster so that any workstation and the
// controller share it (a lost laptop orphans nothing). The controller and
// hostctl (fleet adopt) both use it.
//
// In the store's namespace (meshvm-system by default), every object labelled
// app.kubernetes.io/managed-by=meshvm:
//
//   - Secret meshvm-agent-ca, keys tls.crt and tls.key: the agent CA every
//     vmagent pins; it also signs every client allowed to call the agents.
//   - Secret meshvm-controller-identity, keys tls.crt and tls.key: the
//     controller's client certificate (CN meshvm-controller), signed by that
//     CA; a person's (hostctl's, CN hostctl) stays on the workstation.
//   - Secret vm.<namespace>.<name>, one per MeshVM, labelled meshvm.io/vm and
//     meshvm.io/vm-namespace: the VM's records, keys address, joined (JSON),
//     restart (JSON), agent.crt and agent.key (its agent's identity), and
//     the workload files last generated for it (istio-token, cluster.env,
//     mesh.yaml, hosts, root-cert.pem): the token is a secret, so the
//     records are a Secret and not the MeshVM's status.
//
// A record is written only when it changes. The controller needs get,
// create and update on Secrets in the namespace, list for AddressHolder,
// and delete for Forget.
package fleetstore

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/meshvm/meshvm/pkg/host/onboard"
	"github.com/meshvm/meshvm/pkg/host/statedir"
	"github.com/meshvm/meshvm/pkg/host/vmcore"
	"github.com/meshvm/meshvm/pkg/mesh/ownership"
	"github.com/meshvm/meshvm/pkg/mesh/workloadfiles"
	"github.com/meshvm/meshvm/pkg/mtls"
)

// Names and keys of the store's Secrets.
const (
	DefaultNamespace = "meshvm-system"
	CASecret         = "meshvm-agent-ca"
	IdentitySecret   = "meshvm-controller-identity"
	// ControllerName is the controller's client identity's common name.
	ControllerName = "meshvm-controller"
	// VMNamespaceLabel names the namespace of the MeshVM a record belongs to.
	VMNamespaceLabel = "meshvm.io/vm-namespace"

	keyAddress = "address"
	keyJoined  = "joined"
	keyRestart = "restart"
	keyToken   = "istio-token"
	keyAgent   = "agent.crt"
	keyAgentK  = "agent.key"
)

// caValidity is the agent CA's, as hostctl's state directory issues it.
const caValidity = 10 * 365 * 24 * time.Hour

// Store keeps the records of the VMs of one namespace. It reads each
// record once and then works on what it read or wrote, so one Store serves
// one pass (or one command): a fresh one sees others' writes.
type Store struct {
	ctx  context.Context
	kube kubernetes.Interface
	// ns holds the Secrets; vmNS is the MeshVMs' namespace.
	ns, vmNS string
	// client is the identity that calls agents: nil for the controller's
	// Secret; hostctl passes a person's, kept on the workstation.
	client func(*mtls.CA) (statedir.Pair, error)

	// batched keeps record changes in records until Flush (dirty names
	// them, Created for a Secret to create).
	batched bool

	mu      sync.Mutex
	ca      *mtls.CA
	records map[string]*corev1.Secret
	dirty   map[string]ownership.Action
}

var _ vmcore.Store = (*Store)(nil)

// Option changes a Store.
type Option func(*Store)

// WithClient makes the store call agents as the identity client issues or
// keeps (a person's), instead of the controller's.
func WithClient(client func(*mtls.CA) (statedir.Pair, error)) Option {
	return func(s *Store) { s.client = client }
}

// Batched makes the store keep a VM's record changes and write them in one
// write at Flush: a pass sets a VM's files, token, joined and restart
// records one after another, four writes where one does. What was not
// flushed (a pass cut short) is redone by the next pass, whose steps find
// the VM as the unwritten records would have said and converge again.
func Batched() Option { return func(s *Store) { s.batched = true } }

// New is the store of the VMs of vmNamespace, in namespace ns ("" for
// meshvm-system). Its calls use ctx.
func New(ctx context.Context, kube kubernetes.Interface, ns, vmNamespace string, opts ...Option) *Store {
	if ns == "" {
		ns = DefaultNamespace
	}
	s := &Store{ctx: ctx, kube: kube, ns: ns, vmNS: vmNamespace, records: map[string]*corev1.Secret{}, dirty: map[string]ownership.Action{}}
	for _, o := range opts {
		o(s)
	}
	return s
}

// RecordName is the Secret holding VM name's records: a namespace has no
// dots, so namespace and name cannot run together.
func RecordName(namespace, name string) string { return "vm." + namespace + "." + name }

func (s *Store) secrets() interface {
	Get(context.Context, string, metav1.GetOptions) (*corev1.Secret, error)
	Create(context.Context, *corev1.Secret, metav1.CreateOptions) (*corev1.Secret, error)
	Update(context.Context, *corev1.Secret, metav1.UpdateOptions) (*corev1.Secret, error)
	Delete(context.Context, string, metav1.DeleteOptions) error
	List(context.Context, metav1.ListOptions) (*corev1.SecretList, error)
} {
	return s.kube.CoreV1().Secrets(s.ns)
}

// CA loads the agent CA, creating it on first use; two creators agree on
// the first one written.
func (s *Store) CA() (*mtls.CA, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ca != nil {
		return s.ca, nil
	}
	sec, err := s.secrets().Get(s.ctx, CASecret, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		fresh, nerr := mtls.NewCA("meshvm agent CA", caValidity)
		if nerr != nil {
			return nil, nerr
		}
		key, kerr := fresh.KeyPEM()
		if kerr != nil {
			return nil, kerr
		}
		sec, err = s.secrets().Create(s.ctx, s.tlsSecret(CASecret, fresh.CertPEM(), key), metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			sec, err = s.secrets().Get(s.ctx, CASecret, metav1.GetOptions{})
		}
	}
	if err != nil {
		return nil, fmt.Errorf("agent CA (Secret %s/%s): %w", s.ns, CASecret, err)
	}
	ca, err := mtls.LoadCA(sec.Data[corev1.TLSCertKey], sec.Data[corev1.TLSPrivateKeyKey])
	if err != nil {
		return nil, fmt.Errorf("agent CA in Secret %s/%s: %w: restore it from the state directory that created it", s.ns, CASecret, err)
	}
	s.ca = ca
	return ca, nil
}

// PutCA writes the agent CA (hostctl fleet adopt), unless the same one is
// there. A different one already there is an error: the agents pin it.
func PutCA(ctx context.Context, kube kubernetes.Interface, ns string, ca *mtls.CA) (ownership.Action, error) {
	s := New(ctx, kube, ns, "")
	key, err := ca.KeyPEM()
	if err != nil {
		return "", err
	}
	sec, err := s.secrets().Get(ctx, CASecret, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		if _, err = s.secrets().Create(ctx, s.tlsSecret(CASecret, ca.CertPEM(), key), metav1.CreateOptions{}); err != nil {
			return "", err
		}
		return ownership.Created, nil
	case err != nil:
		return "", err
	case string(sec.Data[corev1.TLSCertKey]) == string(ca.CertPEM()):
		return ownership.Unchanged, nil
	}
	return "", fmt.Errorf("another agent CA is in Secret %s/%s: the VMs of this cluster pin it; adopt from the state directory that created it, or delete that Secret if no VM uses it", s.ns, CASecret)
}

// EnsureNamespace creates the store's namespace when it is missing.
func EnsureNamespace(ctx context.Context, kube kubernetes.Interface, ns string) error {
	_, err := kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns, Labels: ownership.Labels(nil)}}, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		return nil
	}
	return err
}

func (s *Store) tlsSecret(name string, cert, key []byte) *corev1.Secret {
	return &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: s.ns, Labels: ownership.Labels(nil)},
		Type: corev1.SecretTypeTLS, Data: map[string][]byte{corev1.TLSCertKey: cert, corev1.TLSPrivateKeyKey: key}}
}

// identity is the controller's client certificate, issued or renewed in
// its Secret.
func (s *Store) identity(ca *mtls.CA) (statedir.Pair, error) {
	sec, err := s.secrets().Get(s.ctx, IdentitySecret, metav1.GetOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return statedir.Pair{}, fmt.Errorf("controller identity (Secret %s/%s): %w", s.ns, IdentitySecret, err)
	}
	if err == nil && statedir.Usable(ca, sec.Data[corev1.TLSCertKey], nil) {
		return statedir.Pair{Cert: sec.Data[corev1.TLSCertKey], Key: sec.Data[corev1.TLSPrivateKeyKey]}, nil
	}
	p, ierr := statedir.IssueClient(ca, ControllerName)
	if ierr != nil {
		return p, ierr
	}
	fresh := s.tlsSecret(IdentitySecret, p.Cert, p.Key)
	if err == nil {
		fresh.ResourceVersion = sec.ResourceVersion
		_, err = s.secrets().Update(s.ctx, fresh, metav1.UpdateOptions{})
	} else {
		_, err = s.secrets().Create(s.ctx, fresh, metav1.CreateOptions{})
	}
	if apierrors.IsAlreadyExists(err) || apierrors.IsConflict(err) {
		// Another pass issued it first: take that one.
		if sec, err = s.secrets().Get(s.ctx, IdentitySecret, metav1.GetOptions{}); err == nil && statedir.Usable(ca, sec.Data[corev1.TLSCertKey], nil) {
			return statedir.Pair{Cert: sec.Data[corev1.TLSCertKey], Key: sec.Data[corev1.TLSPrivateKeyKey]}, nil
		}
	}
	if err != nil {
		return p, fmt.Errorf("controller identity (Secret %s/%s): %w", s.ns, IdentitySecret, err)
	}
	return p, nil
}

func (s *Store) AgentTLS(server string) (*tls.Config, error) {
	ca, err := s.CA()
	if err != nil {
		return nil, err
	}
	client := s.client
	if client == nil {
		client = s.identity
	}
	p, err := client(ca)
	if err != nil {
		return nil, err
	}
	return mtls.ClientConfig(p.Cert, p.Key, ca.CertPEM(), server)
}

func (s *Store) AgentIdentity(vm string, addresses []string) (onboard.AgentIdentity, error) {
	ca, err := s.CA()
	if err != nil {
		return onboard.AgentIdentity{}, err
	}
	rec, err := s.record(vm)
	if err != nil {
		return onboard.AgentIdentity{}, err
	}
	issue, fits := statedir.VMLeaf(ca, vm, addresses)
	cert, key := rec[keyAgent], rec[keyAgentK]
	if !statedir.Usable(ca, cert, fits) {
		if cert, key, err = issue(); err != nil {
			return onboard.AgentIdentity{}, err
		}
		if err := s.update(vm, map[string][]byte{keyAgent: cert, keyAgentK: key}); err != nil {
			return onboard.AgentIdentity{}, err
		}
	}
	return onboard.AgentIdentity{Cert: cert, Key: key, ClientCA: ca.CertPEM()}, nil
}

// record is VM vm's records as last read or written (nil when none).
func (s *Store) record(vm string) (map[string][]byte, error) {
	sec, err := s.secret(vm)
	if err != nil || sec == nil {
		return nil, err
	}
	return sec.Data, nil
}

func (s *Store) secret(vm string) (*corev1.Secret, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if sec, ok := s.records[vm]; ok {
		return sec, nil
	}
	name := RecordName(s.vmNS, vm)
	sec, err := s.secrets().Get(s.ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		s.records[vm] = nil
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("records of VM %s (Secret %s/%s): %w", vm, s.ns, name, err)
	}
	s.records[vm] = sec
	return sec, nil
}

// update sets keys of VM vm's records (an empty value removes its key),
// writing only when that changes them.
func (s *Store) update(vm string, set map[string][]byte) error {
	_, err := s.put(vm, set)
	return err
}

func (s *Store) put(vm string, set map[string][]byte) (ownership.Action, error) {
	sec, err := s.secret(vm)
	if err != nil {
		return "", err
	}
	var data map[string][]byte
	if sec != nil {
		data = maps.Clone(sec.Data)
	}
	if data == nil {
		data = map[string][]byte{}
	}
	for k, v := range set {
		if len(v) == 0 {
			delete(data, k)
		} else {
			data[k] = v
		}
	}
	if sec != nil && maps.EqualFunc(data, sec.Data, func(a, b []byte) bool { return string(a) == string(b) }) {
		return ownership.Unchanged, nil
	}
	action := ownership.Updated
	if sec == nil {
		action = ownership.Created
		sec = &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: RecordName(s.vmNS, vm), Namespace: s.ns,
			Labels: ownership.Labels(map[string]string{ownership.VMLabel: vm, VMNamespaceLabel: s.vmNS})}, Type: corev1.SecretTypeOpaque}
	} else {
		sec = sec.DeepCopy()
	}
	sec.Data = data
	if s.batched {
		s.mu.Lock()
		if s.dirty[vm] != ownership.Created {
			s.dirty[vm] = action
		}
		s.records[vm] = sec
		s.mu.Unlock()
		return action, nil
	}
	if err := s.write(vm, sec, action == ownership.Created); err != nil {
		return "", err
	}
	return action, nil
}

// write creates or updates VM vm's record Secret.
func (s *Store) write(vm string, sec *corev1.Secret, create bool) error {
	var err error
	if create {
		sec, err = s.secrets().Create(s.ctx, sec, metav1.CreateOptions{})
	} else {
		sec, err = s.secrets().Update(s.ctx, sec, metav1.UpdateOptions{})
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.dirty, vm)
	if err != nil {
		// Read again on the next call: another writer may have moved it.
		delete(s.records, vm)
		return fmt.Errorf("records of VM %s (Secret %s/%s): %w", vm, s.ns, RecordName(s.vmNS, vm), err)
	}
	s.records[vm] = sec
	return nil
}

// Flush writes the records a Batched store kept, one write per VM.
func (s *Store) Flush() error {
	s.mu.Lock()
	vms := slices.Sorted(maps.Keys(s.dirty))
	s.mu.Unlock()
	var errs []error
	for _, vm := range vms {
		s.mu.Lock()
		sec, action := s.records[vm], s.dirty[vm]
		s.mu.Unlock()
		if sec != nil && action != "" {
			errs = append(errs, s.write(vm, sec, action == ownership.Created))
		}
	}
	return errors.Join(errs...)
}

// Records are a VM's records as a state directory kept them: what
// hostctl fleet adopt carries into the cluster.
type Records struct {
	Address string
	Joined  *vmcore.Joined
	Restart *vmcore.Restart
	// Files are the workload files last generated, by name (istio-token...).
	Files map[string][]byte
	// AgentCert and AgentKey are the identity its agent presents.
	AgentCert, AgentKey []byte
}

// Put writes VM vm's records in one write, when they differ.
func (s *Store) Put(vm string, r Records) (ownership.Action, error) {
	var err error
	set := maps.Clone(r.Files)
	if set == nil {
		set = map[string][]byte{}
	}
	set[keyAddress], set[keyAgent], set[keyAgentK] = []byte(r.Address), r.AgentCert, r.AgentKey
	if r.Joined != nil {
		if set[keyJoined], err = json.Marshal(r.Joined); err != nil {
			return "", err
		}
	}
	if r.Restart != nil {
		if set[keyRestart], err = json.Marshal(r.Restart); err != nil {
			return "", err
		}
	}
	return s.put(vm, set)
}

func (s *Store) Address(vm string) (string, error) {
	rec, err := s.record(vm)
	return string(rec[keyAddress]), err
}

func (s *Store) SetAddress(vm, addr string) error {
	return s.update(vm, map[string][]byte{keyAddress: []byte(addr)})
}

// AddressHolder looks through the records of the store's namespace's VMs.
func (s *Store) AddressHolder(addr, except string) (string, error) {
	list, err := s.secrets().List(s.ctx, metav1.ListOptions{LabelSelector: ownership.Label + "=" + ownership.Value + "," + VMNamespaceLabel + "=" + s.vmNS})
	if err != nil {
		return "", fmt.Errorf("records of the VMs in %s: %w", s.vmNS, err)
	}
	for _, sec := range list.Items {
		vm := sec.Labels[ownership.VMLabel]
		if vm != except && vm != "" && string(sec.Data[keyAddress]) == addr {
			return vm, nil
		}
	}
	return "", nil
}

func (s *Store) Joined(vm string) (vmcore.Joined, bool, error) {
	var j vmcore.Joined
	ok, err := s.getJSON(vm, keyJoined, &j)
	return j, ok, err
}

func (s *Store) SetJoined(vm string, j vmcore.Joined) error { return s.setJSON(vm, keyJoined, j) }

func (s *Store) Token(vm string) ([]byte, error) {
	rec, err := s.record(vm)
	return rec[keyToken], err
}

func (s *Store) SetFiles(vm string, f workloadfiles.Files) error { return s.update(vm, f.Map()) }

func (s *Store) SetToken(vm string, tok []byte) error {
	return s.update(vm, map[string][]byte{keyToken: tok})
}

func (s *Store) LastRestart(vm string) (vmcore.Restart, bool, error) {
	var r vmcore.Restart
	ok, err := s.getJSON(vm, keyRestart, &r)
	return r, ok, err
}

func (s *Store) SetLastRestart(vm string, r vmcore.Restart) error {
	return s.setJSON(vm, keyRestart, r)
}

func (s *Store) getJSON(vm, key string, v any) (bool, error) {
	rec, err := s.record(vm)
	if err != nil || len(rec[key]) == 0 {
		return false, err
	}
	if err := json.Unmarshal(rec[key], v); err != nil {
		return false, fmt.Errorf("record %s of VM %s: %w", key, vm, err)
	}
	return true, nil
}

func (s *Store) setJSON(vm, key string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return s.update(vm, map[string][]byte{key: b})
}

// Known says whether VM vm has records: something was issued for it or
// sent to it.
func (s *Store) Known(vm string) (bool, error) {
	sec, err := s.secret(vm)
	return sec != nil, err
}

// Forget deletes VM vm's records (its MeshVM is gone); none is no error.
func (s *Store) Forget(vm string) error {
	err := s.secrets().Delete(s.ctx, RecordName(s.vmNS, vm), metav1.DeleteOptions{})
	s.mu.Lock()
	delete(s.records, vm)
	delete(s.dirty, vm)
	s.mu.Unlock()
	if err != nil && !apierrors.IsNotFound(err) {
		return err
	}
	return nil
}
