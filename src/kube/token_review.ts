import { type KubeApi, KubeApiError } from "./api.ts";

/** The user name the API server gives a ServiceAccount's tokens. */
export function serviceAccountUser(namespace: string, name: string): string {
  return `system:serviceaccount:${namespace}:${name}`;
}

/**
 * Asks the API server who a bearer token belongs to (a TokenReview) and checks that it is
 * `expectedUser`. Resolves to null when it is, or to the reason it is not. A ServiceAccount
 * token bound to a Pod stops passing once that Pod is gone.
 */
export async function reviewToken(
  api: KubeApi,
  token: string,
  expectedUser: string,
): Promise<string | null> {
  if (!token) return "it sent no token";
  let review;
  try {
    review = await api.request("POST", "/apis/authentication.k8s.io/v1/tokenreviews", {
      apiVersion: "authentication.k8s.io/v1",
      kind: "TokenReview",
      spec: { token },
    }, { timeoutMs: 10_000 });
  } catch (e) {
    if (e instanceof KubeApiError && e.status === 403) {
      throw new Error(`meshd may not create TokenReviews: ${e.message}`);
    }
    throw e;
  }
  const status = (review["status"] ?? {}) as {
    authenticated?: boolean;
    error?: string;
    user?: { username?: string };
  };
  if (!status.authenticated) {
    return `its token is not valid${status.error ? `: ${status.error}` : ""}`;
  }
  const user = status.user?.username ?? "";
  if (user !== expectedUser) return `its token is ${user}'s, not ${expectedUser}'s`;
  return null;
}
