package workload

import (
	"context"
	"fmt"
	"slices"
	"time"

	authv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/meshvm/meshvm/pkg/credinfo"
	"github.com/meshvm/meshvm/pkg/mesh/ownership"
)

// credentialType marks the per-VM Secret; it holds no data.
const credentialType corev1.SecretType = "meshvm.io/vm-credential"

// CredentialName is the Secret a VM's istio-token is bound to: while it
// exists the token is valid until it expires; deleting it revokes the token
// (the API server's TokenReview checks the bound object, within the 10 s it
// keeps a successful review cached).
func CredentialName(vm string) string { return "meshvm-" + vm }

// Token is an istio-token issued for a VM.
type Token struct {
	Raw       []byte
	ExpiresAt time.Time
	// Capped says the API server issued a shorter lifetime than asked
	// (its --service-account-max-token-expiration), and how long.
	Capped string
}

// credential is the VM's Secret as it is now (nil when there is none),
// refused when meshvm did not create it.
func credential(ctx context.Context, kc kubernetes.Interface, ns, vm string) (*corev1.Secret, error) {
	name := CredentialName(vm)
	sec, err := kc.CoreV1().Secrets(ns).Get(ctx, name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		return nil, nil
	case err != nil:
		return nil, err
	case sec.Labels[ownership.Label] != ownership.Value:
		return nil, fmt.Errorf("the Secret %s/%s exists but meshvm did not create it (no %s=%s label): rename or delete it, meshvm binds VM %s's token to that name", ns, name, ownership.Label, ownership.Value, vm)
	}
	return sec, nil
}

// createCredential creates the VM's Secret, without a read first: a VM
// given its first token has none. One already there is read instead.
func createCredential(ctx context.Context, kc kubernetes.Interface, ns, vm string) (*corev1.Secret, error) {
	sec := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: CredentialName(vm), Namespace: ns, Labels: map[string]string{ownership.Label: ownership.Value, ownership.VMLabel: vm},
			Annotations: map[string]string{"meshvm.io/purpose": "VM " + vm + "'s istio-token is bound to this Secret: delete it to revoke the token"}},
		Type: credentialType,
	}
	created, err := kc.CoreV1().Secrets(ns).Create(ctx, sec, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		if created, err = credential(ctx, kc, ns, vm); err == nil && created == nil {
			err = fmt.Errorf("the Secret %s/%s was deleted while it was created: try again", ns, sec.Name)
		}
	}
	return created, err
}

// IssueToken requests an istio-token for vm bound to its credential Secret
// (created if missing), audience istio-ca, valid for lifetime or what the
// API server allows.
func IssueToken(ctx context.Context, kc kubernetes.Interface, s Spec, vm string, lifetime time.Duration) (Token, error) {
	sec, err := credential(ctx, kc, s.Namespace, vm)
	if err != nil {
		return Token{}, fmt.Errorf("credential of %s: %w", vm, err)
	}
	return issueToken(ctx, kc, s, vm, lifetime, sec)
}

// issueToken is IssueToken with the VM's Secret as last read (nil: none,
// created first).
func issueToken(ctx context.Context, kc kubernetes.Interface, s Spec, vm string, lifetime time.Duration, sec *corev1.Secret) (Token, error) {
	if sec == nil {
		var err error
		if sec, err = createCredential(ctx, kc, s.Namespace, vm); err != nil {
			return Token{}, fmt.Errorf("credential of %s: %w", vm, err)
		}
	}
	secs := int64(lifetime.Seconds())
	tr, err := kc.CoreV1().ServiceAccounts(s.Namespace).CreateToken(ctx, s.ServiceAccount, &authv1.TokenRequest{
		Spec: authv1.TokenRequestSpec{
			Audiences:         []string{"istio-ca"},
			ExpirationSeconds: &secs,
			BoundObjectRef:    &authv1.BoundObjectReference{Kind: "Secret", APIVersion: "v1", Name: sec.Name, UID: sec.UID},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		return Token{}, fmt.Errorf("token for %s/%s bound to Secret %s: %w", s.Namespace, s.ServiceAccount, sec.Name, err)
	}
	t := Token{Raw: []byte(tr.Status.Token), ExpiresAt: tr.Status.ExpirationTimestamp.Time}
	// The API server caps a request at its maximum without saying so: name it.
	if got := time.Until(t.ExpiresAt); got < lifetime-time.Minute {
		t.Capped = fmt.Sprintf("the API server issued %s of the %s asked for (its --service-account-max-token-expiration): lower workload.tokenLifetime to at most that, or raise the flag", got.Round(time.Minute), lifetime)
	}
	return t, nil
}

// Revoke deletes the VM's credential Secret, which invalidates every token
// bound to it: Deleted or Absent.
func Revoke(ctx context.Context, kc kubernetes.Interface, ns, vm string) (ownership.Action, error) {
	name := CredentialName(vm)
	sec, err := kc.CoreV1().Secrets(ns).Get(ctx, name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		return ownership.Absent, nil
	case err != nil:
		return "", err
	case sec.Labels[ownership.Label] != ownership.Value:
		return "", fmt.Errorf("the Secret %s/%s was not created by meshvm (no %s=%s label): left as it is", ns, name, ownership.Label, ownership.Value)
	}
	err = kc.CoreV1().Secrets(ns).Delete(ctx, name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &sec.UID}})
	if apierrors.IsNotFound(err) {
		return ownership.Absent, nil
	}
	if err != nil {
		return "", err
	}
	return ownership.Deleted, nil
}

// TokenReview is what the cluster says of a token now.
type TokenReview struct {
	Authenticated bool
	Error         string
}

// Review asks the API server whether tok is valid for istio-ca, as istiod does.
func Review(ctx context.Context, kc kubernetes.Interface, tok []byte) (TokenReview, error) {
	r, err := kc.AuthenticationV1().TokenReviews().Create(ctx, &authv1.TokenReview{
		Spec: authv1.TokenReviewSpec{Token: string(tok), Audiences: []string{"istio-ca"}},
	}, metav1.CreateOptions{})
	if err != nil {
		return TokenReview{}, err
	}
	return TokenReview{Authenticated: r.Status.Authenticated, Error: r.Status.Error}, nil
}

// Reusable reports whether tok is vm's: the service account's for
// istio-ca, more than half its life left, and bound to the VM's credential
// Secret as it is now (a revoked token's Secret is gone or a new one; a
// rebuilt cluster's is another).
func Reusable(ctx context.Context, kc kubernetes.Interface, tok []byte, s Spec, vm string, lifetime time.Duration) bool {
	ok, _, err := reusable(ctx, kc, tok, s, vm, lifetime)
	return ok && err == nil
}

// reusable is Reusable, with the VM's Secret when it was read (nil: none,
// or not read because the token's claims already rule it out). The binding
// is checked on the Secret's UID with a read, where a TokenReview (a
// create, on every periodic look at every VM) would say the same: the API
// server accepts a bound token while its Secret's UID is the token's.
func reusable(ctx context.Context, kc kubernetes.Interface, tok []byte, s Spec, vm string, lifetime time.Duration) (bool, *corev1.Secret, error) {
	t, err := credinfo.ParseToken(tok)
	if err != nil || t.Subject != "system:serviceaccount:"+s.Namespace+":"+s.ServiceAccount || t.BoundSecret.Name != CredentialName(vm) ||
		t.BoundSecret.UID == "" || !slices.Contains(t.Audiences, "istio-ca") {
		return false, nil, nil
	}
	// Past half its life (measured on the token itself: a cap may have
	// shortened it) it is replaced, so it never lapses between two runs.
	// A token that outlives a shortened lifetime is replaced too.
	left := time.Until(t.ExpiresAt)
	if life := t.ExpiresAt.Sub(t.IssuedAt); life <= 0 || left <= life/2 || left > lifetime+time.Minute {
		return false, nil, nil
	}
	sec, err := credential(ctx, kc, s.Namespace, vm)
	if err != nil || sec == nil {
		return false, sec, err
	}
	return string(sec.UID) == t.BoundSecret.UID, sec, nil
}

// CredentialUIDs returns the UIDs of the namespace's VM credential Secrets by
// VM name, in one list: what the VMs' tokens must still be bound to.
func CredentialUIDs(ctx context.Context, kc kubernetes.Interface, ns string) (map[string]string, error) {
	secs, err := credentials(ctx, kc, ns)
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, sec := range secs {
		if sec.Name == CredentialName(sec.Labels[ownership.VMLabel]) {
			out[sec.Labels[ownership.VMLabel]] = string(sec.UID)
		}
	}
	return out, nil
}

// credentials are the VM credential Secrets meshvm made in ns.
func credentials(ctx context.Context, kc kubernetes.Interface, ns string) ([]corev1.Secret, error) {
	list, err := kc.CoreV1().Secrets(ns).List(ctx, metav1.ListOptions{LabelSelector: ownership.Label + "=" + ownership.Value + "," + ownership.VMLabel})
	if err != nil {
		return nil, fmt.Errorf("list the VM credentials in %s: %w", ns, err)
	}
	var out []corev1.Secret
	for _, sec := range list.Items {
		if sec.Type == credentialType {
			out = append(out, sec)
		}
	}
	return out, nil
}

// RevokeAll deletes every VM credential Secret meshvm made in ns, so no
// token it issued there stays valid: what down does before anything else,
// whether or not the namespace goes too. It returns how many it deleted.
func RevokeAll(ctx context.Context, kc kubernetes.Interface, ns string) (int, error) {
	secs, err := credentials(ctx, kc, ns)
	if apierrors.IsNotFound(err) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	n := 0
	for _, sec := range secs {
		err := kc.CoreV1().Secrets(ns).Delete(ctx, sec.Name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &sec.UID}})
		switch {
		case err == nil:
			n++
		case !apierrors.IsNotFound(err):
			return n, fmt.Errorf("revoke Secret %s/%s: %w", ns, sec.Name, err)
		}
	}
	return n, nil
}
