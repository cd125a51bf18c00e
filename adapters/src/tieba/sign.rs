//! Tieba's client-API signature: the parameters sorted by key, concatenated
//! as `key=value` with raw (not URL-encoded) values and no separator, then
//! `tiebaclient!!!`, MD5, hex (uppercase, as the open-source clients send).

use md5::{Digest, Md5};

/// The salt appended before hashing.
pub(super) const SIGN_SALT: &str = "tiebaclient!!!";

/// Sort `params` by key and append their `sign`: the form to send.
pub(super) fn signed(mut params: Vec<(&'static str, String)>) -> Vec<(&'static str, String)> {
    params.sort_by(|a, b| a.0.cmp(b.0));
    let sign = sign(params.iter().map(|(key, value)| (*key, value.as_str())));
    params.push(("sign", sign));
    params
}

/// The signature of `params`, which must already be sorted by key.
pub(super) fn sign<'a>(params: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut hasher = Md5::new();
    for (key, value) in params {
        hasher.update(key.as_bytes());
        hasher.update(b"=");
        hasher.update(value.as_bytes());
    }
    hasher.update(SIGN_SALT.as_bytes());
    hex::encode_upper(hasher.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn md5_matches_the_rfc_1321_vectors() {
        assert_eq!(hex::encode(Md5::digest(b"")), "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(hex::encode(Md5::digest(b"abc")), "900150983cd24fb0d6963f7d28e17f72");
    }

    #[test]
    fn the_sign_is_the_md5_of_sorted_raw_pairs_and_the_salt() {
        let form = signed(vec![("kw", "反诈 中心".into()), ("BDUSS", "b&c=d".into()), ("_client_type", "2".into())]);
        let keys: Vec<_> = form.iter().map(|(key, _)| *key).collect();
        assert_eq!(keys, ["BDUSS", "_client_type", "kw", "sign"]);
        let expected = hex::encode_upper(Md5::digest("BDUSS=b&c=d_client_type=2kw=反诈 中心tiebaclient!!!".as_bytes()));
        assert_eq!(form[3].1, expected);
    }
}
