//! The certificate signing request an appliance sends to enrol or renew. Only its public key
//! counts: the CA writes the serial it verified (token or current certificate), never the one a
//! request asks for.

use phonehome_schema::Serial;
use rcgen::string::Ia5String;
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SanType};

use crate::PkiError;
use crate::names::serial_uri;

/// A PKCS#10 request (PEM) for `key`, naming `serial` the way certificates do.
pub fn csr_pem(serial: &Serial, key: &KeyPair) -> Result<String, PkiError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, serial.as_str());
    params.distinguished_name = dn;
    let uri = serial_uri(serial);
    let san = Ia5String::try_from(uri.as_str()).map_err(|e| PkiError::BadName {
        name: uri.clone(),
        reason: e.to_string(),
    })?;
    params.subject_alt_names.push(SanType::URI(san));
    Ok(params.serialize_request(key)?.pem()?)
}
