// API Management in front of Azure OpenAI and ptu-orchestrator, on an existing APIM
// instance: the PTU resource (priority 1) and a pay-as-you-go resource (priority 2) as
// backends, the pool `aoai-pool` that ptu-priority-policy.xml sends high priority to,
// a circuit breaker on each backend that trips on 429 or 5xx and stays open for the
// Retry-After the deployment sent (acceptRetryAfter), the named values ptu-ingress-url
// and ptu-front-secret (the ingress's PTU_TRUSTED_FRONT_SECRET), and optionally the policy on an API and the Event Hubs logger of its token events.
//   az deployment group create -g <rg> -f deploy/apim/backends.bicep \
//     -p apimName=<apim> ptuEndpoint=https://<ptu>.openai.azure.com \
//        paygEndpoint=https://<payg>.openai.azure.com ingressUrl=https://<ingress> \
//        frontSecret=<PTU_TRUSTED_FRONT_SECRET> \
//        apiName=<azure-openai-api> eventHubNamespace=<ns>.servicebus.windows.net
targetScope = 'resourceGroup'

@description('Name of the existing API Management instance.')
param apimName string
@description('Endpoint of the Azure OpenAI resource holding the PTU deployment.')
param ptuEndpoint string
@description('Endpoint of the Azure OpenAI resource holding the pay-as-you-go deployment.')
param paygEndpoint string
@description('Base URL of the ptu-orchestrator ingress, where x-priority: low goes.')
param ingressUrl string
@secure()
@description('The ingress\'s PTU_TRUSTED_FRONT_SECRET: sent as x-ptu-front-secret with the tenant.')
param frontSecret string
@description('Existing API (Azure OpenAI) to attach ptu-priority-policy.xml to; empty: none.')
param apiName string = ''
@description('Event Hubs namespace (FQDN) of the token-event hub; empty: no logger.')
param eventHubNamespace string = ''
@description('Token-event hub that ptu estimator reads (PTU_EVENTHUB_TOKEN_EVENTS_NAME).')
param tokenEventsHub string = 'ptu-token-events'

resource apim 'Microsoft.ApiManagement/service@2024-05-01' existing = {
  name: apimName
}

// One rule per backend (the service's limit): 429 and 5xx trip it at once; it stays open
// for the Retry-After of the answer that tripped it, else for tripDuration.
var breaker = {
  rules: [
    {
      name: 'throttled-or-failing'
      failureCondition: {
        count: 1
        interval: 'PT10S'
        statusCodeRanges: [
          { min: 429, max: 429 }
          { min: 500, max: 599 }
        ]
      }
      tripDuration: 'PT10S'
      acceptRetryAfter: true
    }
  ]
}

resource ptu 'Microsoft.ApiManagement/service/backends@2024-05-01' = {
  parent: apim
  name: 'aoai-ptu'
  properties: {
    description: 'Azure OpenAI, provisioned (PTU) deployment'
    type: 'Single'
    url: '${ptuEndpoint}/openai'
    protocol: 'http'
    circuitBreaker: breaker
  }
}

resource payg 'Microsoft.ApiManagement/service/backends@2024-05-01' = {
  parent: apim
  name: 'aoai-payg'
  properties: {
    description: 'Azure OpenAI, pay-as-you-go (standard) deployment for spillover'
    type: 'Single'
    url: '${paygEndpoint}/openai'
    protocol: 'http'
    circuitBreaker: breaker
  }
}

resource pool 'Microsoft.ApiManagement/service/backends@2024-05-01' = {
  parent: apim
  name: 'aoai-pool'
  properties: {
    description: 'PTU first; pay-as-you-go while the PTU breaker is open'
    type: 'Pool'
    pool: {
      services: [
        { id: ptu.id, priority: 1, weight: 1 }
        { id: payg.id, priority: 2, weight: 1 }
      ]
    }
  }
}

resource ingress 'Microsoft.ApiManagement/service/namedValues@2024-05-01' = {
  parent: apim
  name: 'ptu-ingress-url'
  properties: {
    displayName: 'ptu-ingress-url'
    value: ingressUrl
    secret: false
  }
}

resource frontSecretValue 'Microsoft.ApiManagement/service/namedValues@2024-05-01' = {
  parent: apim
  name: 'ptu-front-secret'
  properties: {
    displayName: 'ptu-front-secret'
    value: frontSecret
    secret: true
  }
}

resource tokenEvents 'Microsoft.ApiManagement/service/loggers@2024-05-01' = if (!empty(eventHubNamespace)) {
  parent: apim
  name: 'ptu-token-events'
  properties: {
    loggerType: 'azureEventHub'
    description: 'Token events of PTU responses for ptu estimator'
    credentials: {
      name: tokenEventsHub
      endpointAddress: eventHubNamespace
      identityClientId: 'SystemAssigned'
    }
  }
}

resource api 'Microsoft.ApiManagement/service/apis@2024-05-01' existing = if (!empty(apiName)) {
  parent: apim
  name: apiName
}

resource policy 'Microsoft.ApiManagement/service/apis/policies@2024-05-01' = if (!empty(apiName)) {
  parent: api
  name: 'policy'
  properties: {
    format: 'xml'
    value: loadTextContent('ptu-priority-policy.xml')
  }
  dependsOn: [pool, ingress, frontSecretValue, tokenEvents]
}

output poolId string = pool.id
